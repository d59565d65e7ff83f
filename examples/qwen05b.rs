//! Qwen2.5-0.5B-shaped models with random weights (real sizes, no download), for the CPU
//! benchmarks in docs/perf.md. Not a training tool: `mmr1-fast` itself makes no models.
//!
//! ```text
//! cargo run --release --example qwen05b -- init DIR [LAYERS]
//!     writes DIR/config.json, DIR/model.safetensors (f32) and DIR/tokens881.json (one random
//!     sequence of 881 ids) for `mmr1-fast logprobs` and benches/logprobs_torch.py
//! cargo run --release --example qwen05b -- logprobs DIR [ITERS]
//!     loads DIR (timed), then times forward + per-token log-probs of DIR/tokens881.json, the
//!     work of `mmr1-fast logprobs` after loading (benches/logprobs_torch.py does the same)
//! cargo run --release --example qwen05b -- train-save DIR [LAYERS]
//!     one SFT step on 881 tokens, then a full checkpoint into DIR; prints the peak RSS after
//!     the step and after the save (measure with `/usr/bin/time -v` too)
//! ```
//! LAYERS (default 24, the real depth) makes a shallower model of the same widths.

use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::safetensors_io::SaveDtype;
use mmr1_fast::model::{Packed, ParamLayout, Qwen2, Qwen2Config};
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::train::checkpoint::save_checkpoint;
use mmr1_fast::train::{micro_step, SftLoss, Workspace};
use rand::{Rng, SeedableRng};
use std::path::Path;

/// Qwen/Qwen2.5-0.5B's config.json, with `layers` decoder layers.
fn config(layers: usize) -> Qwen2Config {
    serde_json::from_value(serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": layers,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": true, "torch_dtype": "float32"
    }))
    .expect("a valid Qwen2 config")
}

fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(881);
    (0..n).map(|_| rng.gen_range(0..vocab)).collect()
}

/// (current, peak) resident set size in MiB, from /proc/self/status.
fn rss_mib() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn model(layers: usize) -> Qwen2<Cpu> {
    let cfg = config(layers);
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::HuggingFace { std: 0.02 }, 0);
    Qwen2::from_host(&Cpu, cfg, layout, &host)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, dir) = match args.as_slice() {
        [c, d, ..] => (c.as_str(), Path::new(d)),
        _ => anyhow::bail!("usage: qwen05b init|logprobs|train-save DIR [LAYERS|ITERS]"),
    };
    let layers: usize = args.get(2).map_or(Ok(24), |s| s.parse())?;
    let be = Cpu;
    match cmd {
        "init" => {
            let m = model(layers);
            m.save_pretrained(&be, dir, SaveDtype::F32)?;
            let ids = tokens(881, 151936);
            std::fs::write(dir.join("tokens881.json"), serde_json::to_string(&[ids])?)?;
            println!("wrote {} ({} layers)", dir.display(), layers);
        }
        "logprobs" => {
            let iters: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
            let t = std::time::Instant::now();
            let m = Qwen2::load(&be, dir)?;
            let load = t.elapsed().as_secs_f64();
            let text = std::fs::read_to_string(dir.join("tokens881.json"))?;
            let seqs: Vec<Vec<u32>> = serde_json::from_str(&text)?;
            let batch = Packed::new(&seqs);
            let (targets, has) = batch.next_token_targets();
            let mut acts = None;
            let mut run = || -> anyhow::Result<f64> {
                m.forward(&be, &batch, &mut acts)?;
                let a = acts.as_ref().expect("forward planned the activations");
                let (lp, _) = m.token_logprobs(&be, a, &targets, 1.0);
                let n = has.iter().filter(|&&h| h).count();
                Ok(lp.iter().zip(&has).filter(|(_, h)| **h).map(|(x, _)| *x as f64).sum::<f64>()
                    / n as f64)
            };
            let mean = run()?; // warm-up
            let mut times = Vec::new();
            for _ in 0..iters {
                let t = std::time::Instant::now();
                run()?;
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            println!(
                "mmr1-fast cpu ({} threads): load {load:.2} s; forward+logprobs over {} tokens \
                 median {:.2} s (min {:.2}, max {:.2}) over {iters}; mean log-prob {mean:.4}",
                rayon::current_num_threads(),
                batch.tokens(),
                times[times.len() / 2],
                times[0],
                times[times.len() - 1]
            );
        }
        "train-save" => {
            let m = model(layers);
            let seqs = vec![tokens(881, 151936)];
            let batch = Packed::new(&seqs);
            let (_, has) = batch.next_token_targets();
            let mut loss = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
            let mut opt = AdamW::new(&be, &m.params, AdamwConfig::default());
            let mut ws = Workspace::new(&m, &be);
            let mut m = m;
            let l = micro_step(&be, &m, &batch, &mut loss, &mut ws)?;
            opt.step(&be, &mut m.params, &ws.grads, 1e-5);
            let (rss, peak) = rss_mib();
            println!("after one step (loss {l:?}): rss {rss:.0} MiB, peak {peak:.0} MiB");
            let t = std::time::Instant::now();
            save_checkpoint(
                &be,
                dir,
                1,
                &m,
                &opt,
                &serde_json::json!({"step": 1}),
                SaveDtype::F32,
                None,
            )?;
            let (rss2, peak2) = rss_mib();
            let largest =
                m.params.iter().map(|p| be.len(p)).max().unwrap_or(0) as f64 * 4.0 / 1048576.0;
            println!(
                "after the checkpoint ({:.1} s): rss {rss2:.0} MiB, peak {peak2:.0} MiB \
                 (+{:.0} MiB over the training peak; largest tensor {largest:.0} MiB)",
                t.elapsed().as_secs_f64(),
                peak2 - peak
            );
        }
        other => anyhow::bail!("unknown command {other} (init, logprobs, train-save)"),
    }
    Ok(())
}
