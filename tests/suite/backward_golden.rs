//! Gradients of every parameter against PyTorch autograd on the golden tiny models
//! (tests/fixtures/README.md): all three sequences packed in one batch, loss =
//! sum lossw * logprobs at temperature 0.7.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::safetensors_io::to_f32;
use mmr1_fast::model::{Packed, Qwen2};
use safetensors::{Dtype, SafeTensors};

fn golden_grads<B: Backend>(be: &B, name: &str) {
    let dir = fixture(name);
    let model = Qwen2::load(be, &dir).unwrap();
    let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
    let g = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| {
        to_f32(&g.tensor(n).unwrap_or_else(|_| panic!("{name}: golden has no {n}"))).unwrap()
    };
    let seqs: Vec<Vec<u32>> = (0..3)
        .map(|i| {
            let t = g.tensor(&format!("tokens.{i}")).unwrap();
            assert_eq!(t.dtype(), Dtype::I64);
            t.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                .collect()
        })
        .collect();
    let batch = Packed::new(&seqs);
    let (targets, _) = batch.next_token_targets();
    // dlp = lossw on rows with a target, 0 on each sequence's last row.
    let mut dlp = vec![0.0f32; batch.tokens()];
    let mut want_lp = vec![0.0f32; batch.tokens()];
    for (i, sp) in batch.spans.iter().enumerate() {
        let w = f32s(&format!("lossw.{i}"));
        let lp = f32s(&format!("logprobs_t07.{i}"));
        dlp[sp.q_start..sp.q_start + sp.q_len - 1].copy_from_slice(&w);
        want_lp[sp.q_start..sp.q_start + sp.q_len - 1].copy_from_slice(&lp);
    }
    let inv_temp = 1.0 / 0.7;
    let mut acts = None;
    model.forward(be, &batch, &mut acts).unwrap();
    let acts = acts.unwrap();
    let (lp, _) = model.token_logprobs(be, &acts, &targets, inv_temp);
    let loss: f64 = lp.iter().zip(&dlp).map(|(l, w)| *l as f64 * *w as f64).sum();
    let want_loss = f32s("loss")[0] as f64;
    assert!(
        (loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
        "{name}: loss {loss} vs golden {want_loss}"
    );
    let masked: Vec<f32> =
        lp.iter().zip(&dlp).map(|(l, w)| if *w != 0.0 { *l } else { 0.0 }).collect();
    assert!(rel_l2(&masked, &want_lp) < 1e-5, "{name}: log-probs differ");

    let mut grads = model.zero_grads(be);
    model.backward(be, &batch, &acts, &targets, &dlp, None, inv_temp, &mut grads);
    let mut worst = (0.0f64, String::new());
    for (spec, gr) in model.layout.specs.iter().zip(&grads) {
        let want = f32s(&format!("grad.{}", spec.name));
        let e = rel_l2(&be.download(gr), &want);
        assert!(e <= 1e-4, "{name}: grad of {} rel L2 {e:e}", spec.name);
        if e > worst.0 {
            worst = (e, spec.name.clone());
        }
    }
    assert_eq!(
        g.names().iter().filter(|n| n.starts_with("grad.")).count(),
        model.layout.specs.len(),
        "{name}: the golden has gradients of parameters the model does not"
    );
    eprintln!(
        "{name}: loss {loss:.6} (golden {want_loss:.6}); worst grad rel L2 {:.2e} ({})",
        worst.0, worst.1
    );
}

#[test]
fn grads_match_pytorch_tiny_tied() {
    golden_grads(&Cpu, "tiny-tied");
}

#[test]
fn grads_match_pytorch_tiny_gqa() {
    golden_grads(&Cpu, "tiny-gqa");
}

/// Scaled RoPE (linear, YaRN with its attention factor, llama3; scripts/make_golden_rope.py):
/// the backward rotates the q/k gradients back through the scaled angle table and factor.
#[test]
fn grads_match_pytorch_scaled_rope() {
    for name in ROPE_FIXTURES {
        golden_grads(&Cpu, name);
    }
}

/// The whole model (forward, chunked log-probs, backward) on the CUDA kernels, run by the
/// emulator, against the same PyTorch goldens: every kernel in its real context.
#[cfg(feature = "emu")]
#[test]
fn grads_match_pytorch_on_the_cuda_emulator() {
    let be = mmr1_fast::backend::cuda::CudaBackend::emulator();
    golden_grads(&be, "tiny-tied");
    golden_grads(&be, "tiny-gqa");
    golden_grads(&be, "tiny-rope/yarn");
}

/// The same on a real GPU: ignored unless asked for (`--include-ignored`, as
/// scripts/gpu-check.sh does for every file's `gpu` module), and then a missing GPU fails.
#[cfg(feature = "cuda")]
mod gpu {
    use super::*;

    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn grads_match_pytorch_on_the_gpu() {
        let be = mmr1_fast::backend::cuda::CudaBackend::new(0)
            .unwrap_or_else(|why| panic!("GPU test asked for, but there is no GPU: {why}"));
        golden_grads(&be, "tiny-tied");
        golden_grads(&be, "tiny-gqa");
        for name in ROPE_FIXTURES {
            golden_grads(&be, name);
        }
    }
}
