//! Activation recomputation (`Workspace::recompute`, `--recompute`): the forward keeps only
//! each layer's input and the backward re-runs each layer's forward before its backward.
//!
//! 1. The loss, the log-probs and every gradient are the same BITS with it on and off (same
//!    kernels in the same order), on the CPU and on the CUDA emulator (f32 kernels, and bf16
//!    GEMMs with the flash attention kernels), over two accumulated micro-batches of ragged
//!    packed sequences of different token counts and a loss with an entropy term.
//! 2. On the emulator, the step's peak device memory is lower by about the activations of all
//!    layers but one (the bound is derived in `recompute_lowers_peak_memory_by_the_layers_not_kept`).
//! 3. A log-prob pass with no backward after it (`forward_logprobs`) plans one layer's buffers
//!    unless the workspace holds a plan for its tokens already, with the same bits either way,
//!    and so peaks lower by the other layers' activations.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::{Packed, ParamLayout, Qwen2, Qwen2Config};
use mmr1_fast::train::{forward_logprobs, micro_step, LossGrad, SftLoss, TokenLoss, Workspace};
use rand::{Rng, SeedableRng};

/// `layers` layers; head dim 16 (the emulator's flash kernels run in bf16), GQA 2, odd MLP
/// width, untied head.
fn config(layers: usize) -> Qwen2Config {
    serde_json::from_value(serde_json::json!({
        "hidden_size": 64, "intermediate_size": 72, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97,
        "tie_word_embeddings": false, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256
    }))
    .unwrap()
}

/// A loss of the log-probs AND the entropies with random weights (zero on some rows), so
/// that both upstream gradients of the head reach the layers.
struct RandomLoss {
    w: Vec<f32>,
    u: Vec<f32>,
    rows: Vec<usize>,
}

impl RandomLoss {
    fn new(rows: usize, seed: u64) -> Self {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut pick = |p: f64| {
            (0..rows)
                .map(|_| if r.gen_bool(p) { r.gen_range(-0.05f32..0.05) } else { 0.0 })
                .collect()
        };
        let (w, u): (Vec<f32>, Vec<f32>) = (pick(0.7), pick(0.5));
        let rows = (0..rows).filter(|&r| w[r] != 0.0 || u[r] != 0.0).collect();
        RandomLoss { w, u, rows }
    }
}

impl<B: Backend> TokenLoss<B> for RandomLoss {
    fn inv_temp(&self) -> f32 {
        1.0 / 0.7
    }
    fn rows(&self) -> &[usize] {
        &self.rows
    }
    fn eval(&mut self, be: &B, lp: &B::Buf, ent: &B::Buf) -> LossGrad<B> {
        let (lp, ent) = (be.download(lp), be.download(ent));
        let loss = (0..self.w.len())
            .map(|r| self.w[r] as f64 * lp[r] as f64 + self.u[r] as f64 * ent[r] as f64)
            .sum();
        LossGrad { loss, dlp: be.upload(&self.w), dent: Some(be.upload(&self.u)) }
    }
}

/// What a step leaves: the two micro-batches' losses, a log-prob pass after them, and every
/// accumulated gradient.
#[derive(PartialEq)]
struct Outcome {
    loss_bits: Vec<u64>,
    lp_bits: Vec<u32>,
    grad_bits: Vec<Vec<u32>>,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Two micro-batches of one optimizer step (an SFT loss on a batch with a sequence longer
/// than a 64-row attention tile, then an entropy-weighted loss on a batch of another token
/// count, so the workspace is re-planned), then a forward-only log-prob pass.
fn step<B: Backend>(be: &B, layers: usize, recompute: bool) -> Outcome {
    let cfg = config(layers);
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 7);
    let model = Qwen2::from_host(be, cfg, layout, &host);
    let mut ws = Workspace::new(&model, be).with_recompute(recompute);
    let a = Packed::new(&[random_ids(13, 97, 1), random_ids(70, 97, 2), random_ids(5, 97, 3)]);
    let b = Packed::new(&[random_ids(9, 97, 4), random_ids(31, 97, 5)]);
    let (_, has) = a.next_token_targets();
    let mut sft = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    let mut rl = RandomLoss::new(b.tokens(), 6);
    let l1 = micro_step(be, &model, &a, &mut sft, &mut ws).unwrap();
    let l2 = micro_step(be, &model, &b, &mut rl, &mut ws).unwrap();
    assert_eq!(ws.acts.as_ref().unwrap().recomputes(), recompute);
    let (_, lp, ent) = forward_logprobs(be, &model, &a, 1.0, &mut ws).unwrap();
    assert!(l1.is_finite() && l2.is_finite() && lp.iter().chain(&ent).all(|x| x.is_finite()));
    let grads: Vec<Vec<f32>> = ws.grads.iter().map(|g| be.download(g)).collect();
    assert!(grads.iter().flatten().all(|x| x.is_finite()), "a gradient is not finite");
    assert!(grads.iter().all(|g| g.iter().any(|&x| x != 0.0)), "a gradient is all zero");
    Outcome {
        loss_bits: vec![l1.to_bits(), l2.to_bits()],
        lp_bits: bits(&lp).into_iter().chain(bits(&ent)).collect(),
        grad_bits: grads.iter().map(|g| bits(g)).collect(),
    }
}

fn recompute_changes_no_bit<B: Backend>(be: &B) {
    let layers = 3;
    let off = step(be, layers, false);
    let on = step(be, layers, true);
    assert_eq!(off.loss_bits, on.loss_bits, "losses differ");
    assert_eq!(off.lp_bits, on.lp_bits, "log-probs or entropies differ");
    let names: Vec<String> =
        ParamLayout::new(&config(layers)).specs.iter().map(|s| s.name.clone()).collect();
    for ((n, a), b) in names.iter().zip(&off.grad_bits).zip(&on.grad_bits) {
        let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(diff, 0, "gradient of {n}: {diff} of {} elements differ", a.len());
    }
    assert!(off == on);
}

#[test]
fn cpu_gradients_are_bit_identical_with_recomputation() {
    recompute_changes_no_bit(&Cpu);
}

/// `forward_logprobs` on a fresh workspace plans one layer's buffers; after a training
/// micro-step on the same tokens it reuses that step's plan (all layers kept); both give the
/// same bits.
fn logprob_pass_plans_one_layer<B: Backend>(be: &B) {
    let cfg = config(3);
    let layout = ParamLayout::new(&cfg);
    let model = Qwen2::from_host(
        be,
        cfg,
        layout.clone(),
        &init_params(&layout, Init::Sensitive { std: 0.1 }, 3),
    );
    let a = Packed::new(&[random_ids(13, 97, 1), random_ids(70, 97, 2), random_ids(5, 97, 3)]);
    let mut fresh = Workspace::without_grads(&model, be);
    let (_, lp1, ent1) = forward_logprobs(be, &model, &a, 0.7, &mut fresh).unwrap();
    assert!(fresh.acts.as_ref().unwrap().recomputes(), "a lone log-prob pass keeps all layers");
    let mut trained = Workspace::new(&model, be);
    let (_, has) = a.next_token_targets();
    let mut sft = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    micro_step(be, &model, &a, &mut sft, &mut trained).unwrap();
    let (_, lp2, ent2) = forward_logprobs(be, &model, &a, 0.7, &mut trained).unwrap();
    assert!(!trained.acts.as_ref().unwrap().recomputes(), "the step's plan was replaced");
    assert!(lp1.iter().chain(&ent1).all(|x| x.is_finite()));
    assert_eq!(bits(&lp1), bits(&lp2), "log-probs differ between the plans");
    assert_eq!(bits(&ent1), bits(&ent2), "entropies differ between the plans");
}

#[test]
fn cpu_logprob_pass_plans_one_layer() {
    logprob_pass_plans_one_layer(&Cpu);
}

#[cfg(feature = "emu")]
mod emu {
    use super::*;
    use mmr1_fast::backend::cuda::emu::EmuDevice;
    use mmr1_fast::backend::cuda::CudaBackend;
    use mmr1_fast::backend::precision::Precision;

    fn emu(p: Precision) -> CudaBackend<EmuDevice> {
        CudaBackend::emulator().with_precision(p).unwrap()
    }

    #[test]
    fn emulator_f32_gradients_are_bit_identical_with_recomputation() {
        recompute_changes_no_bit(&emu(Precision::F32));
    }

    /// bf16 GEMM operands (weights from their bf16 shadows) and the flash attention kernels:
    /// the recomputed forward must read and produce exactly what the first one did.
    #[test]
    fn emulator_bf16_gradients_are_bit_identical_with_recomputation() {
        recompute_changes_no_bit(&emu(Precision::Bf16));
    }

    #[test]
    fn emulator_logprob_pass_plans_one_layer() {
        logprob_pass_plans_one_layer(&emu(Precision::Bf16));
    }

    /// Bytes one layer's activation buffers take for `t` tokens, as the allocator counts them.
    fn one_layer_bytes(t: usize) -> u64 {
        let be = emu(Precision::F32);
        let layout = ParamLayout::new(&config(1));
        let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 1);
        let model = Qwen2::from_host(&be, config(1), layout, &host);
        let before = be.memory_stats().unwrap().in_use_bytes;
        let la = model.alloc_layer_acts(&be, t);
        let a = be.memory_stats().unwrap().in_use_bytes - before;
        drop(la);
        a
    }

    /// Peak of a log-prob pass on a fresh emulator, with the workspace empty (the pass plans
    /// one layer) or holding an all-layers plan for its tokens (as after a training step).
    fn logprob_peak(layers: usize, seqs: &[usize], kept: bool) -> u64 {
        let be = emu(Precision::F32);
        let layout = ParamLayout::new(&config(layers));
        let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 7);
        let model = Qwen2::from_host(&be, config(layers), layout, &host);
        let seqs: Vec<Vec<u32>> =
            seqs.iter().enumerate().map(|(i, &n)| random_ids(n, 97, i as u64)).collect();
        let batch = Packed::new(&seqs);
        let mut ws = Workspace::without_grads(&model, &be);
        if kept {
            ws.acts = Some(model.alloc_acts(&be, batch.tokens()));
        }
        forward_logprobs(&be, &model, &batch, 1.0, &mut ws).unwrap();
        assert_eq!(ws.acts.as_ref().unwrap().recomputes(), !kept);
        be.memory_stats().unwrap().peak_in_use_bytes
    }

    /// A lone log-prob pass saves the activations of all layers but one: between `L - 2` and
    /// `L - 1` layers' worth (the argument of the bound below, without the backward's
    /// temporaries).
    #[test]
    fn a_lone_logprob_pass_peaks_lower_by_the_layers_not_kept() {
        let (layers, seqs) = (5, [13, 70, 5, 40]);
        let per_layer = one_layer_bytes(128);
        let (kept, one) = (logprob_peak(layers, &seqs, true), logprob_peak(layers, &seqs, false));
        let l = layers as u64;
        println!(
            "MEM log-prob pass, 128 tokens, {layers} layers: {kept} B kept, {one} B one layer"
        );
        assert!(kept - one.min(kept) >= (l - 2) * per_layer, "saved {} B", kept - one.min(kept));
        assert!(kept - one <= (l - 1) * per_layer, "saved {} B", kept - one);
    }

    /// Peak bytes in use (`memory_stats`) of one training micro-step on a fresh emulator.
    fn peak(layers: usize, t_seqs: &[usize], recompute: bool) -> u64 {
        let be = emu(Precision::F32);
        let cfg = config(layers);
        let layout = ParamLayout::new(&cfg);
        let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 7);
        let model = Qwen2::from_host(&be, cfg, layout, &host);
        let mut ws = Workspace::new(&model, &be).with_recompute(recompute);
        let seqs: Vec<Vec<u32>> =
            t_seqs.iter().enumerate().map(|(i, &n)| random_ids(n, 97, i as u64)).collect();
        let batch = Packed::new(&seqs);
        let (_, has) = batch.next_token_targets();
        let mut loss = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
        micro_step(&be, &model, &batch, &mut loss, &mut ws).unwrap();
        be.memory_stats().unwrap().peak_in_use_bytes
    }

    /// The bound. Every buffer of the step without recomputation is also allocated, in the
    /// same order, with it, except the activations of `L - 1` layers (`L` layers' buffers
    /// kept against one shared). Recomputation adds only the temporaries of one layer's
    /// forward during the backward, which are smaller than one layer's activations `A`. So
    /// `peak_off - peak_on >= (L - 1) A - A`, with `A` measured as the allocator counts it
    /// (size classes) by planning one layer's buffers on a fresh device. And the saving can
    /// be no more than what is not kept: `peak_off - peak_on <= (L - 1) A` (up to the size
    /// classes of cached blocks, which may round a request up by at most 2x: not seen here).
    #[test]
    fn recompute_lowers_peak_memory_by_the_layers_not_kept() {
        let (layers, seqs) = (5, [13, 70, 5, 40]);
        let t: usize = seqs.iter().sum();
        let per_layer = one_layer_bytes(t);
        // What the docs' per-token figure is: a layer keeps rstd1, xn1, q, k, v, att, lse,
        // x_mid, rstd2, xn2, gate, up, act. At 128 tokens every buffer is a whole size class,
        // so the allocator counts exactly the f32 bytes.
        let c = config(1);
        let (d, i, h) = (c.hidden_size, c.intermediate_size, c.num_attention_heads);
        let kvd = c.n_kv_heads() * c.head_dim();
        let floats_per_token = 5 * d + 2 * kvd + h + 2 + 3 * i;
        assert_eq!(t, 128);
        assert_eq!(per_layer, (4 * floats_per_token * t) as u64, "one layer's activations");
        let off = peak(layers, &seqs, false);
        let on = peak(layers, &seqs, true);
        let l = layers as u64;
        println!(
            "MEM {t} tokens, {layers} layers: peak without recomputation {off} B, with {on} B, \
             saved {} B; one layer's activations {per_layer} B ({} B per token)",
            off - on.min(off),
            per_layer / t as u64
        );
        assert!(on < off, "recomputation did not lower the peak: {on} >= {off}");
        assert!(
            off - on >= (l - 2) * per_layer,
            "saved {} B, less than (L - 2) layers' activations {}",
            off - on,
            (l - 2) * per_layer
        );
        assert!(
            off - on <= (l - 1) * per_layer,
            "saved {} B, more than the {} layers not kept ({} B)",
            off - on,
            l - 1,
            (l - 1) * per_layer
        );
    }
}

/// The step time both ways on the CPU at `benches/train_step.rs`'s shape (hidden 256, 4
/// layers, 4 heads / 2 kv heads, intermediate 704, vocab 2048, untied; 8 x 128 tokens, every
/// token trained): forward, log-probs, loss, backward. Prints medians of interleaved rounds
/// (the numbers in docs/perf.md); asserts nothing about time.
#[test]
#[ignore = "timing for docs/perf.md: cargo test --test recompute -- --ignored --nocapture"]
fn cpu_step_time_with_and_without_recomputation() {
    let cfg: Qwen2Config = serde_json::from_value(serde_json::json!({
        "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048,
        "tie_word_embeddings": false, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256
    }))
    .unwrap();
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::HuggingFace { std: 0.02 }, 0);
    let model = Qwen2::from_host(&Cpu, cfg, layout, &host);
    let seqs: Vec<Vec<u32>> = (0..8).map(|s| random_ids(128, 2048, s)).collect();
    let batch = Packed::new(&seqs);
    let (_, has) = batch.next_token_targets();
    let mut loss = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    let mut ws = [false, true].map(|r| Workspace::new(&model, &Cpu).with_recompute(r));
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..8 {
        for (k, w) in ws.iter_mut().enumerate() {
            let t0 = std::time::Instant::now();
            micro_step(&Cpu, &model, &batch, &mut loss, w).unwrap();
            if round > 0 {
                times[k].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for (k, name) in ["off", "on"].iter().enumerate() {
        times[k].sort_by(f64::total_cmp);
        let med = times[k][times[k].len() / 2];
        println!("TIME recompute {name}: median {med:.1} ms, min {:.1} ms", times[k][0]);
    }
}
