//! `config.json` of a Qwen2-family checkpoint, as Hugging Face writes it.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The fields of a Qwen2 config the engine uses. Unknown keys are kept in `extra` so a
/// config written back is the one read, plus what training changed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Qwen2Config {
    #[serde(default = "default_arch")]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Released Qwen2.5 checkpoints write `rope_theta` at the top level; transformers 5.x
    /// writes it inside `rope_parameters`. Either is accepted; `rope_theta()` resolves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The `eos_token_id` of `generation_config.json` beside config.json (read by `load`):
    /// transformers' `generate` stops on these, and so does this engine (`eos_ids`). Not part
    /// of config.json; a saved checkpoint carries the file itself.
    #[serde(skip)]
    pub generation_eos: Vec<u32>,
}

fn default_arch() -> Vec<String> {
    vec!["Qwen2ForCausalLM".into()]
}
fn default_model_type() -> String {
    "qwen2".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    32768
}

impl Qwen2Config {
    /// Reads and validates `dir/config.json`; every error names the file and the field.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut cfg: Qwen2Config = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid Qwen2 config", path.display()))?;
        cfg.validate().with_context(|| format!("{}: invalid config", path.display()))?;
        cfg.generation_eos = generation_eos_ids(dir)?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.model_type != "qwen2" {
            bail!(
                "model_type is {:?}; this engine runs Qwen2-family decoders (model_type \"qwen2\")",
                self.model_type
            );
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("num_key_value_heads", self.n_kv_heads()),
        ] {
            if v == 0 {
                bail!("field {name} must be positive");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !self.num_attention_heads.is_multiple_of(self.n_kv_heads()) {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.n_kv_heads()
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("head_dim {} must be even for rotary embeddings", self.head_dim());
        }
        if let Some(act) = self.extra.get("hidden_act").and_then(|v| v.as_str()) {
            if act != "silu" {
                bail!("hidden_act is {act:?}; Qwen2 uses \"silu\"");
            }
        }
        if let Some(v) = self.extra.get("head_dim").filter(|v| !v.is_null()) {
            if v.as_u64() != Some(self.head_dim() as u64) {
                bail!(
                    "head_dim {v} is not hidden_size / num_attention_heads = {}: projections \
                     of another width than hidden_size are not supported",
                    self.head_dim()
                );
            }
        }
        self.rope_scaling().context("rope settings")?;
        self.sliding_window()?;
        let theta = self.rope_theta();
        if !(theta.is_finite() && theta > 0.0) {
            bail!("rope_theta {theta} must be a positive number");
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            bail!("rms_norm_eps {} must be a non-negative number", self.rms_norm_eps);
        }
        Ok(())
    }

    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// `rope_theta` as transformers 5 resolves it: the rope settings' own (`rope_scaling` when
    /// that is a non-empty object, else `rope_parameters`; see `rope_scaling::rope_dict`), else
    /// the top level's, else Qwen2's 10000.
    pub fn rope_theta(&self) -> f64 {
        super::rope_scaling::rope_dict(self)
            .and_then(|d| d.get("rope_theta")?.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    /// The rotary embedding's scaling (`rope_scaling` / `rope_parameters`): `None` for plain
    /// RoPE. An unsupported or malformed setting is an error naming it.
    pub fn rope_scaling(&self) -> Result<Option<super::rope_scaling::RopeScaling>> {
        super::rope_scaling::from_config(self)
    }

    /// The attention window of the layers that slide, as transformers' Qwen2 decides it:
    /// `sliding_window` when `use_sliding_window` is true and some layer is a
    /// "sliding_attention" one (`layer_types`, else the layers from `max_window_layers` on);
    /// `None` when every layer attends to its whole sequence.
    pub fn sliding_window(&self) -> Result<Option<usize>> {
        let on = self.extra.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false);
        let window = match self.extra.get("sliding_window") {
            Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .with_context(|| format!("sliding_window is {v}, not a non-negative integer"))?
                    as usize,
            ),
            None => Some(4096), // transformers' Qwen2Config default
        };
        let Some(window) = window.filter(|_| on) else { return Ok(None) };
        let slides = match self.extra.get("layer_types") {
            Some(Value::Array(types)) => types.iter().any(|t| t == "sliding_attention"),
            _ => {
                let first = match self.extra.get("max_window_layers") {
                    None => 28, // transformers' default
                    Some(v) => v.as_u64().with_context(|| {
                        format!("max_window_layers is {v}, not a non-negative integer")
                    })? as usize,
                };
                first < self.num_hidden_layers
            }
        };
        if !slides {
            return Ok(None);
        }
        if window == 0 {
            bail!("sliding_window is 0 with use_sliding_window true");
        }
        Ok(Some(window))
    }

    /// A sliding-window model's sequences must fit the window: this engine attends to the whole
    /// sequence, which equals transformers' windowed attention exactly while every span's keys
    /// number at most the window. `kv_lens` are the spans' key counts.
    pub fn check_window(&self, kv_lens: impl IntoIterator<Item = usize>) -> Result<()> {
        if let Some(w) = self.sliding_window()? {
            if let Some(len) = kv_lens.into_iter().find(|&n| n > w) {
                bail!(
                    "a sequence of {len} tokens is longer than the model's sliding_window {w} \
                     (use_sliding_window is true): sliding-window attention is not supported; \
                     keep sequences within {w} tokens"
                );
            }
        }
        Ok(())
    }
    /// Every id must index the vocabulary; the error names the offending id and position.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if let Some((i, &id)) =
            ids.iter().enumerate().find(|(_, &id)| id as usize >= self.vocab_size)
        {
            bail!("token id {id} at position {i} is out of range (vocab_size {})", self.vocab_size);
        }
        Ok(())
    }

    /// End-of-sequence ids: config.json's `eos_token_id` (a number or a list), then those of
    /// generation_config.json it lacks (`generation_eos`).
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = ids_of(self.eos_token_id.as_ref());
        for &id in &self.generation_eos {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

/// Token ids of an `eos_token_id` field: a number, a list of numbers, or nothing.
fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

/// `eos_token_id` of `dir/generation_config.json`; none when the file is absent. A file that is
/// not JSON is an error naming it (transformers would refuse it too).
pub(crate) fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(ids_of(v.get("eos_token_id")))
}
