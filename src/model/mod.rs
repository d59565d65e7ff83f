//! The Qwen2 decoder, written once against `Backend`: loading, the full-sequence forward
//! (keeping the activations the backward pass needs), chunked log-probs over the vocabulary,
//! and incremental decoding with a KV cache.

pub mod backward;
pub mod config;
pub mod forward;
pub mod grad_hook;
pub mod head;
pub mod init;
pub mod kv_cache;
pub mod mrope;
pub mod params;
pub mod rope_scaling;
pub mod rope_tables;
pub mod safetensors_io;
pub mod vision_backward;
pub mod vision_config;
pub mod vision_forward;
pub mod vision_params;
pub mod vision_preprocess;
pub mod vision_windows;
pub mod vl;
pub mod vl_decode;
pub mod vl_forward;
pub mod vl_init;
pub mod vl_prompt;
pub mod vl_save;

pub use backward::GradScratch;
pub use config::Qwen2Config;
pub use forward::{Acts, Packed};
pub use grad_hook::GradHook;
pub use kv_cache::KvCache;
pub use params::ParamLayout;
pub use vision_config::{Qwen2VlConfig, VisionConfig};
pub use vision_params::VisionLayout;

use crate::backend::{AttnShape, Backend};
use anyhow::Result;
use std::path::Path;

/// A Qwen2 model on a backend: config, parameter layout, and one buffer per parameter.
pub struct Qwen2<B: Backend> {
    pub cfg: Qwen2Config,
    pub layout: ParamLayout,
    pub params: Vec<B::Buf>,
}

impl<B: Backend> Qwen2<B> {
    /// Loads `dir/config.json` and the safetensors weights onto `be`.
    pub fn load(be: &B, dir: &Path) -> Result<Self> {
        let mut cfg = Qwen2Config::load(dir)?;
        safetensors_io::untie_if_the_head_differs(dir, &mut cfg)?;
        let layout = ParamLayout::new(&cfg);
        let host = safetensors_io::load_params(dir, &layout)?;
        Ok(Self::from_host_vecs(be, cfg, layout, host))
    }

    /// [`Qwen2::from_host`] taking the host tensors: each is handed to the backend with
    /// `upload_vec` (kept as is on the CPU) and freed once uploaded elsewhere.
    pub fn from_host_vecs(
        be: &B,
        cfg: Qwen2Config,
        layout: ParamLayout,
        host: Vec<Vec<f32>>,
    ) -> Self {
        let params = host.into_iter().map(|h| be.upload_vec(h)).collect();
        Qwen2 { cfg, layout, params }
    }

    pub fn from_host(be: &B, cfg: Qwen2Config, layout: ParamLayout, host: &[Vec<f32>]) -> Self {
        let params = host.iter().map(|h| be.upload(h)).collect();
        Qwen2 { cfg, layout, params }
    }

    /// Copies every parameter back to the host, in layout order.
    pub fn to_host(&self, be: &B) -> Vec<Vec<f32>> {
        self.params.iter().map(|p| be.download(p)).collect()
    }

    pub fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.cfg.num_attention_heads,
            n_kv_heads: self.cfg.n_kv_heads(),
            head_dim: self.cfg.head_dim(),
        }
    }

    /// Every id must index the vocabulary; the error names the offending id and position.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        self.cfg.check_ids(ids)
    }
}

impl<B: Backend> Qwen2<B> {
    /// Writes `dir/config.json` and `dir/model.safetensors` as Hugging Face does (tied models
    /// have no `lm_head.weight`), each file atomically. The directory is created if needed.
    pub fn save_pretrained(
        &self,
        be: &B,
        dir: &Path,
        dtype: safetensors_io::SaveDtype,
    ) -> Result<()> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // One parameter at a time: saving holds at most one tensor beyond the model.
        let tensor = |i: usize| Ok(std::borrow::Cow::Owned(be.download(&self.params[i])));
        safetensors_io::write_model_files_from(dir, &self.cfg, &self.layout, tensor, dtype, None)
    }
}
