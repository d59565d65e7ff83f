//! The whole model on the CUDA emulator with the flash attention kernels (`AttnKernel::Flash`)
//! against the CPU reference: packed forward, log-probs, every parameter's gradient, and
//! KV-cache decoding (prefill through the flash forward, decode steps through flash-decoding).
//!
//! Tolerances (relative L2 vs f32 CPU): log-probs and decode logits 1e-2, gradients 3e-2 —
//! attention's Q, K, V, P, dO and dS are rounded to bf16 at the tensor cores; everything else
//! in this model is still f32.
#![cfg(feature = "emu")]

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::cuda::{AttnKernel, CudaBackend};
use mmr1_fast::backend::Backend;
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::{Packed, ParamLayout, Qwen2, Qwen2Config};

/// Head dim 16 (a flash size), GQA 2, two layers.
fn config() -> Qwen2Config {
    serde_json::from_value(serde_json::json!({
        "hidden_size": 64, "intermediate_size": 72, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97,
        "tie_word_embeddings": false, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256
    }))
    .unwrap()
}

fn model_on<B: Backend>(be: &B) -> Qwen2<B> {
    model_of(be, config())
}

fn model_of<B: Backend>(be: &B, cfg: Qwen2Config) -> Qwen2<B> {
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 7);
    Qwen2::from_host(be, cfg, layout, &host)
}

/// (log-probs, gradients) of a packed batch that crosses a 64-row tile.
fn lp_and_grads<B: Backend>(be: &B) -> (Vec<f32>, Vec<Vec<f32>>) {
    let model = model_on(be);
    let seqs = [random_ids(13, 97, 1), random_ids(70, 97, 2), random_ids(5, 97, 3)];
    let batch = Packed::new(&seqs);
    let (targets, _) = batch.next_token_targets();
    let mut acts = None;
    model.forward(be, &batch, &mut acts).unwrap();
    let acts = acts.unwrap();
    let (lp, _) = model.token_logprobs(be, &acts, &targets, 1.0);
    let dlp: Vec<f32> = (0..batch.tokens()).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
    let mut grads = model.zero_grads(be);
    model.backward(be, &batch, &acts, &targets, &dlp, None, 1.0, &mut grads);
    (lp, grads.iter().map(|g| be.download(g)).collect())
}

#[test]
fn flash_model_matches_cpu() {
    let emu = CudaBackend::emulator().with_attention(AttnKernel::Flash);
    let (lp_c, g_c) = lp_and_grads(&Cpu);
    let (lp_e, g_e) = lp_and_grads(&emu);
    let e = rel_l2(&lp_e, &lp_c);
    println!("ERR flash model log-probs: {e:.3e}");
    assert!(e <= 1e-2, "log-probs rel L2 {e:.3e}");
    let names =
        ParamLayout::new(&config()).specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let mut worst = 0.0f64;
    for ((n, a), b) in names.iter().zip(&g_e).zip(&g_c) {
        let e = rel_l2(a, b);
        worst = worst.max(e);
        assert!(e <= 3e-2, "grad of {n}: rel L2 {e:.3e}");
    }
    println!("ERR flash model worst gradient: {worst:.3e}");
}

/// Decoding at head dim 64 (the staged and mma decode kernels' size; GQA 7 as Qwen2.5-0.5B):
/// a prefill of 70 tokens (two 64-key tiles) then decode steps, every decode kernel against
/// the CPU's logits. Tolerance 2e-2: at this width the bf16 KV cache and the prefill's bf16
/// attention alone put the logits ~1e-2 from the f32 CPU's (the f32 split kernel: 0.85-1.35e-2).
#[test]
fn decode_kernels_at_head_dim_64_match_cpu() {
    use mmr1_fast::backend::cuda::DecodeKernel;
    let mut cfg = config();
    (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) = (448, 7, Some(1));
    let seqs = [random_ids(74, 97, 4), random_ids(40, 97, 5)];
    fn decode<B: Backend>(be: &B, cfg: &Qwen2Config, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let model = model_of(be, cfg.clone());
        let mut cache = model.new_cache(be, 2, 80);
        let pre: Vec<(usize, &[u32])> = vec![(0, &seqs[0][..70]), (1, &seqs[1][..36])];
        let mut out = vec![model.decode_step(be, &mut cache, &pre).unwrap()];
        for p in 0..4 {
            let inputs: Vec<(usize, &[u32])> =
                vec![(0, &seqs[0][70 + p..71 + p]), (1, &seqs[1][36 + p..37 + p])];
            out.push(model.decode_step(be, &mut cache, &inputs).unwrap());
        }
        out
    }
    let want = decode(&Cpu, &cfg, &seqs);
    for kernel in [DecodeKernel::Split, DecodeKernel::Staged, DecodeKernel::Mma] {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        let dev = EmuDevice::with_schedules(&[Schedule::Forward]).with_profile();
        let mut emu = CudaBackend::with_device(dev).with_attention(AttnKernel::Flash);
        emu.set_decode_kernel(kernel);
        let got = decode(&emu, &cfg, &seqs);
        for (step, (g, w)) in got.iter().zip(&want).enumerate() {
            let e = rel_l2(g, w);
            assert!(e <= 2e-2, "{kernel:?} decode step {step}: logits rel L2 {e:.3e}");
        }
        let ran = emu.kernel_profile();
        let calls = |n: &str| ran.iter().find(|k| k.name == n).map_or(0, |k| k.calls);
        let name = match kernel {
            DecodeKernel::Split => "flash_decode_split_bf16",
            DecodeKernel::Staged => "flash_decode_staged_bf16_d64",
            DecodeKernel::Mma => "flash_decode_mma_bf16_d64",
        };
        assert!(calls(name) > 0, "{kernel:?}: {name} never ran");
    }
}

#[test]
fn flash_decode_matches_cpu() {
    let emu = CudaBackend::emulator().with_attention(AttnKernel::Flash);
    let seqs = [random_ids(9, 97, 4), random_ids(3, 97, 5)];
    let run = |be: &dyn Fn(&mut Vec<Vec<f32>>)| {
        let mut out = Vec::new();
        be(&mut out);
        out
    };
    fn decode<B: Backend>(be: &B, seqs: &[Vec<u32>], out: &mut Vec<Vec<f32>>) {
        let model = model_on(be);
        let mut cache = model.new_cache(be, 2, 32);
        // Prefill 2 tokens each (flash forward), then one token at a time (flash-decoding).
        let pre: Vec<(usize, &[u32])> = vec![(0, &seqs[0][..2]), (1, &seqs[1][..2])];
        out.push(model.decode_step(be, &mut cache, &pre).unwrap());
        for p in 2..seqs[0].len() {
            let mut inputs: Vec<(usize, &[u32])> = vec![(0, &seqs[0][p..p + 1])];
            if p < seqs[1].len() {
                inputs.push((1, &seqs[1][p..p + 1]));
            }
            out.push(model.decode_step(be, &mut cache, &inputs).unwrap());
        }
    }
    let want = run(&|o| decode(&Cpu, &seqs, o));
    let got = run(&|o| decode(&emu, &seqs, o));
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = rel_l2(g, w);
        assert!(e <= 1e-2, "decode step {step}: logits rel L2 {e:.3e}");
    }
}
