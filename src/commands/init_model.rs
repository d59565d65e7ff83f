//! `mmr1-fast init-model`: a Qwen2.5-shaped model with random weights, written as a Hugging
//! Face model directory, so benchmarks and tests at real sizes need no download.

use crate::model::init::{init_params, Init};
use crate::model::safetensors_io::{write_model_files, SaveDtype};
use crate::model::{ParamLayout, Qwen2Config};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Published Qwen2.5 sizes (the `config.json` of Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}-Instruct).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "qwen2.5-0.5b")]
    Qwen25_0_5b,
    #[value(name = "qwen2.5-1.5b")]
    Qwen25_1_5b,
    #[value(name = "qwen2.5-3b")]
    Qwen25_3b,
    #[value(name = "qwen2.5-7b")]
    Qwen25_7b,
}

impl Arch {
    /// The published config: (hidden, intermediate, layers, heads, kv heads, vocab, tied).
    pub fn config(self) -> Qwen2Config {
        let (d, i, l, h, kv, v, tied) = match self {
            Arch::Qwen25_0_5b => (896, 4864, 24, 14, 2, 151936, true),
            Arch::Qwen25_1_5b => (1536, 8960, 28, 12, 2, 151936, true),
            Arch::Qwen25_3b => (2048, 11008, 36, 16, 2, 151936, true),
            Arch::Qwen25_7b => (3584, 18944, 28, 28, 4, 152064, false),
        };
        serde_json::from_value(serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "hidden_size": d, "intermediate_size": i, "num_hidden_layers": l,
            "num_attention_heads": h, "num_key_value_heads": kv, "vocab_size": v,
            "tie_word_embeddings": tied, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768, "bos_token_id": 151643, "eos_token_id": 151645,
            "hidden_act": "silu", "initializer_range": 0.02, "use_sliding_window": false,
            "sliding_window": 32768, "max_window_layers": l, "attention_dropout": 0.0,
            "use_cache": true
        }))
        .expect("built-in config")
    }
}

#[derive(clap::Args, Debug)]
pub struct InitModelArgs {
    /// Published shape to build.
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// Output directory (created; must not hold a model.safetensors already).
    #[arg(long)]
    pub out: PathBuf,
    /// Keep the published widths with this many layers instead (quick benchmarks, tests).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Weight dtype of the written file (published checkpoints are bf16).
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: SaveDtype,
    /// Seed of the random weights (N(0, 0.02), biases 0, norms 1: Hugging Face's init).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A tokenizer.json to copy into the directory (e.g. a real Qwen vocabulary).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

/// Writes a random model of `cfg` into `dir`; returns its parameter count.
pub fn write_random_model(
    dir: &Path,
    cfg: &Qwen2Config,
    dtype: SaveDtype,
    seed: u64,
    tokenizer: Option<&Path>,
) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let layout = ParamLayout::new(cfg);
    let std = cfg.extra.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02) as f32;
    let host = init_params(&layout, Init::HuggingFace { std }, seed);
    write_model_files(dir, cfg, &layout, &host, dtype, tokenizer)?;
    Ok(layout.numel())
}

pub fn run(args: &InitModelArgs) -> Result<()> {
    if args.out.join("model.safetensors").exists() {
        bail!("{} already holds a model.safetensors; choose another --out", args.out.display());
    }
    if let Some(t) = &args.tokenizer {
        if !t.is_file() {
            bail!("--tokenizer {}: no such file", t.display());
        }
    }
    let mut cfg = args.arch.config();
    if let Some(l) = args.layers {
        if l == 0 {
            bail!("--layers must be at least 1");
        }
        cfg.num_hidden_layers = l;
        cfg.extra.insert("max_window_layers".into(), l.into());
    }
    let n = write_random_model(&args.out, &cfg, args.dtype, args.seed, args.tokenizer.as_deref())?;
    println!(
        "wrote {} ({:?}, {} layers, {:.3}B parameters, {:?})",
        args.out.display(),
        args.arch,
        cfg.num_hidden_layers,
        n as f64 / 1e9,
        args.dtype
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter counts of the published checkpoints (safetensors totals on the model cards).
    #[test]
    fn published_parameter_counts() {
        for (arch, n) in [
            (Arch::Qwen25_0_5b, 494_032_768usize),
            (Arch::Qwen25_1_5b, 1_543_714_304),
            (Arch::Qwen25_3b, 3_085_938_688),
            (Arch::Qwen25_7b, 7_615_616_512),
        ] {
            assert_eq!(ParamLayout::new(&arch.config()).numel(), n, "{arch:?}");
        }
    }

    #[test]
    fn writes_a_loadable_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Arch::Qwen25_0_5b.config();
        // tiny widths so the test is fast
        cfg.num_attention_heads = 4;
        cfg.num_key_value_heads = Some(2);
        cfg.hidden_size = 64;
        cfg.intermediate_size = 96;
        cfg.num_hidden_layers = 2;
        cfg.vocab_size = 300;
        let n = write_random_model(dir.path(), &cfg, SaveDtype::Bf16, 3, None).unwrap();
        let m = crate::model::Qwen2::load(&crate::backend::cpu::Cpu, dir.path()).unwrap();
        assert_eq!(m.cfg, Qwen2Config::load(dir.path()).unwrap());
        assert_eq!(m.layout.numel(), n);
        let host = m.to_host(&crate::backend::cpu::Cpu);
        let w = &host[m.layout.embed];
        let sd = (w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!((sd - 0.02).abs() < 0.002, "embedding std {sd}");
    }
}
