//! `mmr1-fast init-model`: a Qwen2.5- or Qwen2.5-VL-shaped model with random weights, written
//! as a Hugging Face model directory, so benchmarks and tests at real sizes need no download.

use crate::data::visual_demo::{visual_demo_config, visual_demo_tokenizer};
use crate::model::init::{init_params, Init};
use crate::model::safetensors_io::{write_model_files, SaveDtype};
use crate::model::vl_init::{published_preprocessor_config, write_random_vl_model};
use crate::model::{ParamLayout, Qwen2Config, Qwen2VlConfig};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::path::{Path, PathBuf};

/// Published Qwen2.5 sizes (the `config.json` of Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}-Instruct),
/// Qwen2.5-VL sizes (Qwen/Qwen2.5-VL-{3B,7B}-Instruct), and the visual demo's tiny Qwen2.5-VL.
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
    #[value(name = "qwen2.5-vl-3b")]
    Qwen25Vl3b,
    #[value(name = "qwen2.5-vl-7b")]
    Qwen25Vl7b,
    /// The visual demo's model (`train --demo visual`), with its own character tokenizer.
    #[value(name = "qwen2.5-vl-tiny")]
    Qwen25VlTiny,
}

/// A Qwen2.5-VL decoder's (hidden, intermediate, layers, heads, kv heads, vocab, tied,
/// max_window_layers).
type VlShape = (usize, usize, usize, usize, usize, usize, bool, usize);

/// The flat `config.json` of a published Qwen2.5-VL checkpoint:
/// huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json and
/// huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json. Both towers are the same
/// 32-block, 1280-wide ViT (full attention at blocks 7, 15, 23, 31); only the merger's output
/// width (the decoder's hidden size) differs.
fn published_vl((d, i, l, h, kv, v, tied, mwl): VlShape) -> Qwen2VlConfig {
    let json = serde_json::json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
        "hidden_act": "silu", "hidden_size": d, "initializer_range": 0.02,
        "intermediate_size": i, "max_position_embeddings": 128000, "max_window_layers": mwl,
        "num_attention_heads": h, "num_hidden_layers": l, "num_key_value_heads": kv,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": tied, "use_cache": true, "use_sliding_window": false,
        "vision_config": {
            "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
            "num_heads": 16, "in_chans": 3, "out_hidden_size": d, "patch_size": 14,
            "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
            "temporal_patch_size": 2
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vocab_size": v
    });
    Qwen2VlConfig::from_json(&json).expect("built-in config")
}

impl Arch {
    /// The Qwen2.5-VL config of a VL shape (None for the text ones).
    pub fn vl_config(self) -> Option<Qwen2VlConfig> {
        match self {
            Arch::Qwen25Vl3b => Some(published_vl((2048, 11008, 36, 16, 2, 151936, true, 70))),
            Arch::Qwen25Vl7b => Some(published_vl((3584, 18944, 28, 28, 4, 152064, false, 28))),
            Arch::Qwen25VlTiny => Some(
                visual_demo_tokenizer()
                    .and_then(|t| visual_demo_config(&t))
                    .expect("built-in config"),
            ),
            _ => None,
        }
    }

    /// The published config of the language model: (hidden, intermediate, layers, heads, kv
    /// heads, vocab, tied); for a VL shape, its decoder.
    pub fn config(self) -> Qwen2Config {
        if let Some(vl) = self.vl_config() {
            return vl.text;
        }
        let (d, i, l, h, kv, v, tied) = match self {
            Arch::Qwen25_0_5b => (896, 4864, 24, 14, 2, 151936, true),
            Arch::Qwen25_1_5b => (1536, 8960, 28, 12, 2, 151936, true),
            Arch::Qwen25_3b => (2048, 11008, 36, 16, 2, 151936, true),
            Arch::Qwen25_7b => (3584, 18944, 28, 28, 4, 152064, false),
            _ => unreachable!("VL shapes returned above"),
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
    /// Keep the published widths with this many layers instead (quick benchmarks, tests);
    /// for a Qwen2.5-VL shape, the language model's layers (the vision tower is kept whole).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Weight dtype of the written file (published checkpoints are bf16).
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: SaveDtype,
    /// Seed of the random weights (N(0, 0.02), biases 0, norms 1: Hugging Face's init).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A tokenizer.json to copy into the directory (e.g. a real Qwen vocabulary; with
    /// tokenizer_config.json when it sits beside it). qwen2.5-vl-tiny writes its own.
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
        if args.arch == Arch::Qwen25VlTiny {
            bail!("--tokenizer: qwen2.5-vl-tiny writes its own character tokenizer (its vocab_size and vision token ids are that tokenizer's)");
        }
    }
    if args.layers == Some(0) {
        bail!("--layers must be at least 1");
    }
    let (n, layers) = match args.arch.vl_config() {
        Some(mut vl) => {
            if let Some(l) = args.layers {
                vl.text.num_hidden_layers = l;
            }
            let n = write_random_vl(
                &args.out,
                &vl,
                args.arch,
                args.dtype,
                args.seed,
                args.tokenizer.as_deref(),
            )?;
            (n, vl.text.num_hidden_layers)
        }
        None => {
            let mut cfg = args.arch.config();
            if let Some(l) = args.layers {
                cfg.num_hidden_layers = l;
                cfg.extra.insert("max_window_layers".into(), l.into());
            }
            let n = write_random_model(
                &args.out,
                &cfg,
                args.dtype,
                args.seed,
                args.tokenizer.as_deref(),
            )?;
            (n, cfg.num_hidden_layers)
        }
    };
    // The names the user types (`qwen2.5-0.5b`, `bf16`), not the enums' Rust names.
    let name = |v: Option<clap::builder::PossibleValue>| v.map(|v| v.get_name().to_string());
    let params = if n < 100_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        format!("{:.3}B", n as f64 / 1e9)
    };
    println!(
        "wrote {} ({}, {layers} layer{}, {params} parameters, {})",
        args.out.display(),
        name(args.arch.to_possible_value()).unwrap_or_default(),
        if layers == 1 { "" } else { "s" },
        name(args.dtype.to_possible_value()).unwrap_or_default()
    );
    Ok(())
}

/// Writes a random Qwen2.5-VL of `cfg` (shape `arch`) into `dir` with the published
/// preprocessor config; the tiny shape also gets its character tokenizer. Returns the
/// parameter count.
pub fn write_random_vl(
    dir: &Path,
    cfg: &Qwen2VlConfig,
    arch: Arch,
    dtype: SaveDtype,
    seed: u64,
    tokenizer: Option<&Path>,
) -> Result<usize> {
    let n =
        write_random_vl_model(dir, cfg, &published_preprocessor_config(), dtype, seed, tokenizer)?;
    if arch == Arch::Qwen25VlTiny {
        visual_demo_tokenizer()?.save(&dir.join("tokenizer.json"))?;
    }
    Ok(n)
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

    /// Parameter counts of the published Qwen2.5-VL checkpoints (safetensors totals of
    /// Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct; the vision tower is 668,684,288 and
    /// 676,550,144 of them), counted from the layouts without writing anything.
    #[test]
    fn published_vl_parameter_counts() {
        for (arch, n, vision) in [
            (Arch::Qwen25Vl3b, 3_754_622_976usize, 668_684_288usize),
            (Arch::Qwen25Vl7b, 8_292_166_656, 676_550_144),
        ] {
            let cfg = arch.vl_config().unwrap();
            let (text, vis, total) = crate::model::vl_init::vl_layouts(&cfg);
            assert_eq!(total, n, "{arch:?}");
            assert_eq!(vis.numel(), vision, "{arch:?}");
            assert_eq!(text.numel(), ParamLayout::new(&arch.config()).numel());
        }
        // The decoders are the text models of the same size.
        assert_eq!(Arch::Qwen25Vl7b.config().hidden_size, Arch::Qwen25_7b.config().hidden_size);
        assert_eq!(
            ParamLayout::new(&Arch::Qwen25Vl3b.config()).numel(),
            ParamLayout::new(&Arch::Qwen25_3b.config()).numel()
        );
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

    /// The tiny Qwen2.5-VL written by init-model loads (config, weights, tokenizer,
    /// preprocessor) and runs a forward on a demo picture with finite logits; bf16 too.
    #[test]
    fn tiny_vl_loads_and_runs() {
        use crate::backend::cpu::Cpu;
        use crate::data::prompt::{render_prompt_with_images, PromptStyle};
        use crate::data::visual_demo::{write_images, VisualTask};
        use crate::model::vl_forward::VlModel;
        use crate::model::vl_prompt::{expand_image_placeholders, VlImages};
        for dtype in [SaveDtype::F32, SaveDtype::Bf16] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = Arch::Qwen25VlTiny.vl_config().unwrap();
            let n = write_random_vl(dir.path(), &cfg, Arch::Qwen25VlTiny, dtype, 4, None).unwrap();
            let host = crate::model::vl::VlHost::load(dir.path()).unwrap();
            assert_eq!(host.cfg, cfg);
            assert_eq!(host.text_layout.numel() + host.vision_layout.numel(), n);
            let qkv = &host.vision[host.vision_layout.blocks[0].qkv_w];
            let sd =
                (qkv.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / qkv.len() as f64).sqrt();
            assert!((sd - 0.02).abs() < 0.002, "vision qkv std {sd}");
            let tok =
                crate::tokenizer::Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
            tok.check_matches(dir.path(), &cfg.text).unwrap();

            let m = VlModel::load(&Cpu, dir.path()).unwrap();
            let it = &VisualTask::default().items(1, 3, "i")[0];
            write_images(std::slice::from_ref(it), dir.path()).unwrap();
            let imgs =
                VlImages::load(&[dir.path().join(&it.item.images[0])], dir.path(), &cfg.vision)
                    .unwrap();
            assert_eq!(imgs.grids, vec![[1, 6, 6]], "84 px: 6 x 6 patches");
            let prompt =
                render_prompt_with_images(&tok, &it.item.problem, None, PromptStyle::Plain, 1)
                    .unwrap();
            let ids = tok.encode(&prompt).unwrap();
            let e = expand_image_placeholders(&[ids], cfg.image_token_id, &imgs.token_counts(2))
                .unwrap();
            assert_eq!(e.seqs[0].iter().filter(|&&t| t == cfg.image_token_id).count(), 9);
            let batch = m.pack(&[(&e.seqs[0], &imgs.grids)]).unwrap();
            let mut acts = None;
            m.forward(&Cpu, &batch, Some(&imgs.pixels), &mut acts).unwrap();
            let rows: Vec<usize> = (0..batch.packed.tokens()).collect();
            let logits = m.text.logits_of_rows(&Cpu, &acts.unwrap().xn_f, &rows);
            assert_eq!(logits.len(), rows.len() * cfg.text.vocab_size);
            assert!(logits.iter().all(|x| x.is_finite()) && logits.iter().any(|&x| x != 0.0));
        }
    }
}
