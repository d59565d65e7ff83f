//! The parameter set of a Qwen2 decoder: names (as in Hugging Face checkpoints), shapes, and
//! an ordered list of buffers. Weights, gradients and optimizer moments share this layout,
//! so an optimizer or a checkpoint writer is one loop over `ParamLayout::specs`.

use super::config::Qwen2Config;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Indices into `ParamLayout::specs` of one decoder layer's tensors.
#[derive(Clone, Copy, Debug)]
pub struct LayerIdx {
    pub input_norm: usize,
    pub q_w: usize,
    pub q_b: usize,
    pub k_w: usize,
    pub k_b: usize,
    pub v_w: usize,
    pub v_b: usize,
    pub o_w: usize,
    pub post_norm: usize,
    pub gate_w: usize,
    pub up_w: usize,
    pub down_w: usize,
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub specs: Vec<ParamSpec>,
    pub embed: usize,
    pub layers: Vec<LayerIdx>,
    pub final_norm: usize,
    /// `None` when the output projection is the (tied) embedding.
    pub lm_head: Option<usize>,
}

impl ParamLayout {
    pub fn new(cfg: &Qwen2Config) -> Self {
        let (d, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let kvd = cfg.n_kv_heads() * cfg.head_dim();
        let mut specs = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| {
            specs.push(ParamSpec { name, shape });
            specs.len() - 1
        };
        let embed = add("model.embed_tokens.weight".into(), vec![v, d]);
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = |s: &str| format!("model.layers.{l}.{s}");
                LayerIdx {
                    input_norm: add(p("input_layernorm.weight"), vec![d]),
                    q_w: add(p("self_attn.q_proj.weight"), vec![d, d]),
                    q_b: add(p("self_attn.q_proj.bias"), vec![d]),
                    k_w: add(p("self_attn.k_proj.weight"), vec![kvd, d]),
                    k_b: add(p("self_attn.k_proj.bias"), vec![kvd]),
                    v_w: add(p("self_attn.v_proj.weight"), vec![kvd, d]),
                    v_b: add(p("self_attn.v_proj.bias"), vec![kvd]),
                    o_w: add(p("self_attn.o_proj.weight"), vec![d, d]),
                    post_norm: add(p("post_attention_layernorm.weight"), vec![d]),
                    gate_w: add(p("mlp.gate_proj.weight"), vec![i, d]),
                    up_w: add(p("mlp.up_proj.weight"), vec![i, d]),
                    down_w: add(p("mlp.down_proj.weight"), vec![d, i]),
                }
            })
            .collect();
        let final_norm = add("model.norm.weight".into(), vec![d]);
        let lm_head = (!cfg.tie_word_embeddings).then(|| add("lm_head.weight".into(), vec![v, d]));
        ParamLayout { specs, embed, layers, final_norm, lm_head }
    }

    /// The output projection's index: `lm_head`, or the embedding when tied.
    pub fn head(&self) -> usize {
        self.lm_head.unwrap_or(self.embed)
    }

    pub fn numel(&self) -> usize {
        self.specs.iter().map(|s| s.numel()).sum()
    }
}
