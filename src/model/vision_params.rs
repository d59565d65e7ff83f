//! The parameter set of the Qwen2.5-VL vision tower (`visual.*` in Hugging Face checkpoints):
//! names, shapes and indices, in the same `ParamSpec` form as the decoder's `ParamLayout`, so
//! loading, saving and optimizer loops treat both alike.

use super::params::ParamSpec;
use super::vision_config::VisionConfig;

/// Indices into `VisionLayout::specs` of one vision block's tensors. Every vision linear has
/// a bias; the norms are RMSNorms (weight only).
#[derive(Clone, Copy, Debug)]
pub struct VisionBlockIdx {
    pub norm1: usize,
    pub qkv_w: usize,
    pub qkv_b: usize,
    pub proj_w: usize,
    pub proj_b: usize,
    pub norm2: usize,
    pub gate_w: usize,
    pub gate_b: usize,
    pub up_w: usize,
    pub up_b: usize,
    pub down_w: usize,
    pub down_b: usize,
}

#[derive(Clone, Debug)]
pub struct VisionLayout {
    pub specs: Vec<ParamSpec>,
    /// `visual.patch_embed.proj.weight` `[hidden, in_channels, temporal, patch, patch]`: a
    /// Conv3d whose stride equals its kernel, i.e. a GEMM over flattened patches.
    pub patch_embed: usize,
    pub blocks: Vec<VisionBlockIdx>,
    /// `visual.merger.ln_q.weight` `[hidden]`.
    pub ln_q: usize,
    /// `visual.merger.mlp.0` `[merged, merged]` + bias: Linear, then GELU.
    pub mlp0_w: usize,
    pub mlp0_b: usize,
    /// `visual.merger.mlp.2` `[out_hidden, merged]` + bias: into the language model's width.
    pub mlp2_w: usize,
    pub mlp2_b: usize,
}

impl VisionLayout {
    pub fn new(cfg: &VisionConfig) -> Self {
        let (d, i, m) = (cfg.hidden_size, cfg.intermediate_size, cfg.merged_dim());
        let mut specs = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| {
            specs.push(ParamSpec { name, shape });
            specs.len() - 1
        };
        let patch_embed = add(
            "visual.patch_embed.proj.weight".into(),
            vec![d, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size],
        );
        let blocks = (0..cfg.depth)
            .map(|b| {
                let p = |s: &str| format!("visual.blocks.{b}.{s}");
                VisionBlockIdx {
                    norm1: add(p("norm1.weight"), vec![d]),
                    qkv_w: add(p("attn.qkv.weight"), vec![3 * d, d]),
                    qkv_b: add(p("attn.qkv.bias"), vec![3 * d]),
                    proj_w: add(p("attn.proj.weight"), vec![d, d]),
                    proj_b: add(p("attn.proj.bias"), vec![d]),
                    norm2: add(p("norm2.weight"), vec![d]),
                    gate_w: add(p("mlp.gate_proj.weight"), vec![i, d]),
                    gate_b: add(p("mlp.gate_proj.bias"), vec![i]),
                    up_w: add(p("mlp.up_proj.weight"), vec![i, d]),
                    up_b: add(p("mlp.up_proj.bias"), vec![i]),
                    down_w: add(p("mlp.down_proj.weight"), vec![d, i]),
                    down_b: add(p("mlp.down_proj.bias"), vec![d]),
                }
            })
            .collect();
        let ln_q = add("visual.merger.ln_q.weight".into(), vec![d]);
        let mlp0_w = add("visual.merger.mlp.0.weight".into(), vec![m, m]);
        let mlp0_b = add("visual.merger.mlp.0.bias".into(), vec![m]);
        let mlp2_w = add("visual.merger.mlp.2.weight".into(), vec![cfg.out_hidden_size, m]);
        let mlp2_b = add("visual.merger.mlp.2.bias".into(), vec![cfg.out_hidden_size]);
        VisionLayout { specs, patch_embed, blocks, ln_q, mlp0_w, mlp0_b, mlp2_w, mlp2_b }
    }

    pub fn numel(&self) -> usize {
        self.specs.iter().map(|s| s.numel()).sum()
    }
}
