//! Writing a Qwen2.5-VL checkpoint as a Hugging Face directory that `transformers` loads with
//! `Qwen2_5_VLForConditionalGeneration.from_pretrained` and this engine reloads bit-identically
//! (`VlHost::load`): `config.json` in the nested layout transformers 5 writes (`text_config`
//! with `rope_parameters {mrope_section, rope_theta, rope_type, type: "mrope"}`,
//! `vision_config`, the special token ids and `tie_word_embeddings` at the top level; see
//! ../shared/BUILD-NOTES.md, "Qwen2.5-VL on the Hugging Face side"), one `model.safetensors`
//! holding the decoder (`model.*`, `lm_head`) and every `visual.*` tensor, and the processor
//! files copied from the source model directory (`preprocessor_config.json`, tokenizer, chat
//! template) so images are preprocessed as before.

use super::params::ParamLayout;
use super::safetensors_io::{write_safetensors, SaveDtype};
use super::vision_config::Qwen2VlConfig;
use super::vision_params::VisionLayout;
use super::vl_forward::VlModel;
use crate::backend::Backend;
use crate::fs::write_atomic;
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// Files of a model directory that are not weights or config but belong with them (the image
/// processor's and the tokenizer's), copied verbatim when present in the source directory,
/// with the tokenizer's side files (`tokenizer::TOKENIZER_SIDE_FILES`: its chat template).
pub const VL_ASSET_FILES: [&str; 3] =
    ["preprocessor_config.json", "tokenizer.json", "generation_config.json"];

fn dtype_name(dtype: SaveDtype) -> &'static str {
    match dtype {
        SaveDtype::F32 => "float32",
        SaveDtype::Bf16 => "bfloat16",
    }
}

impl Qwen2VlConfig {
    /// The config as transformers 5 writes `Qwen2_5_VLConfig` (nested), for weights stored as
    /// `dtype`. Unknown keys read from either layout are kept (text ones in `text_config`,
    /// vision ones in `vision_config`); `Qwen2VlConfig::from_json` of the result equals `self`.
    pub fn to_json(&self, dtype: SaveDtype) -> Result<Value> {
        let mut text = match serde_json::to_value(&self.text)? {
            Value::Object(m) => m,
            _ => unreachable!("a struct serializes to an object"),
        };
        // `from_json` set these for the Qwen2 reader; transformers wants the VL text model.
        text.remove("architectures");
        text.remove("tie_word_embeddings");
        text.remove("rope_theta");
        text.insert("model_type".into(), json!("qwen2_5_vl_text"));
        text.insert(
            "rope_parameters".into(),
            json!({
                "mrope_section": self.mrope_section,
                "rope_theta": self.text.rope_theta(),
                "rope_type": "default",
                "type": "mrope",
            }),
        );
        let mut root = Map::new();
        root.insert("architectures".into(), json!(["Qwen2_5_VLForConditionalGeneration"]));
        root.insert("dtype".into(), json!(dtype_name(dtype)));
        root.insert("image_token_id".into(), json!(self.image_token_id));
        root.insert("model_type".into(), json!("qwen2_5_vl"));
        root.insert("text_config".into(), Value::Object(text));
        root.insert("tie_word_embeddings".into(), json!(self.text.tie_word_embeddings));
        root.insert("video_token_id".into(), json!(self.video_token_id));
        root.insert("vision_config".into(), serde_json::to_value(&self.vision)?);
        root.insert("vision_end_token_id".into(), json!(self.vision_end_token_id));
        root.insert("vision_start_token_id".into(), json!(self.vision_start_token_id));
        Ok(Value::Object(root))
    }
}

/// Writes `dir/config.json` and `dir/model.safetensors` (decoder then vision tensors, sorted
/// by name in the file as safetensors does), each atomically, and copies `VL_ASSET_FILES`
/// from `assets` (the source model directory) when given. `tensor(i)` yields parameter `i` of
/// the decoder layout followed by the vision layout (`i >= text.specs.len()` is vision tensor
/// `i - text.specs.len()`), fetched one at a time so a model on a device is saved without a
/// host copy of all of it. `dir` must exist.
pub fn write_vl_model_files_from<'a>(
    dir: &Path,
    cfg: &Qwen2VlConfig,
    text: &ParamLayout,
    vision: &VisionLayout,
    tensor: impl FnMut(usize) -> Result<Cow<'a, [f32]>>,
    dtype: SaveDtype,
    assets: Option<&Path>,
) -> Result<()> {
    let json = serde_json::to_vec_pretty(&cfg.to_json(dtype)?)?;
    write_atomic(&dir.join("config.json"), &json)?;
    let heads: Vec<(String, Vec<usize>)> =
        text.specs.iter().chain(&vision.specs).map(|s| (s.name.clone(), s.shape.clone())).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join("model.safetensors"), &heads, dtype, Some(&meta), tensor)?;
    if let Some(src) = assets {
        copy_assets(src, dir)?;
    }
    Ok(())
}

/// Copies the `VL_ASSET_FILES` and tokenizer side files that exist in `src` into `dir`
/// (atomically each). Copying a
/// directory onto itself does nothing.
pub fn copy_assets(src: &Path, dir: &Path) -> Result<()> {
    if src.canonicalize().ok() == dir.canonicalize().ok() {
        return Ok(());
    }
    let side = crate::tokenizer::TOKENIZER_SIDE_FILES;
    crate::fs::copy_present(src, dir, VL_ASSET_FILES.into_iter().chain(side))
}

impl<B: Backend> VlModel<B> {
    /// Writes the model as a Hugging Face directory (see the module doc); `assets` is the
    /// directory whose preprocessor and tokenizer files go with it (usually the one loaded).
    pub fn save_pretrained(
        &self,
        be: &B,
        dir: &Path,
        dtype: SaveDtype,
        assets: Option<&Path>,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let n_text = self.text.params.len();
        let tensor = |i: usize| {
            let buf =
                if i < n_text { &self.text.params[i] } else { &self.vision.params[i - n_text] };
            Ok(Cow::Owned(be.download(buf)))
        };
        write_vl_model_files_from(
            dir,
            &self.cfg,
            &self.text.layout,
            &self.vision.layout,
            tensor,
            dtype,
            assets,
        )
    }
}
