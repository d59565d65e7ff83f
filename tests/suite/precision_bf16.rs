//! `--precision bf16` on the emulator (bf16 GEMM operands as cuBLAS GemmEx reads them, flash
//! attention on bf16 tensor cores, everything else f32) against the f32 CPU reference, on a
//! tiny model: the tolerances docs/perf.md states for bf16.
//!
//! Tolerances (relative L2 against the CPU in f32; measured values are printed as ERR lines):
//! per-token log-probs <= 1e-2, the step's loss <= 1e-2 (relative), every parameter's
//! gradient <= 3e-2, parameters after one AdamW step <= 1e-2. `--precision f32` on the
//! emulator stays within 1e-5 of the CPU.
#![cfg(feature = "emu")]

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
use mmr1_fast::backend::cuda::{CudaBackend, FlashDq, FlashFwd, FlashIo};
use mmr1_fast::backend::precision::Precision;
use mmr1_fast::backend::{Backend, Tr};
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::{Packed, ParamLayout, Qwen2, Qwen2Config};
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::train::{micro_step, SftLoss, Workspace};

/// Head dim 16 (the flash kernels run), GQA 2, odd MLP width, untied head.
fn config() -> Qwen2Config {
    serde_json::from_value(serde_json::json!({
        "hidden_size": 64, "intermediate_size": 72, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97,
        "tie_word_embeddings": false, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256
    }))
    .unwrap()
}

struct Step {
    lp: Vec<f32>,
    loss: f64,
    grads: Vec<Vec<f32>>,
    params: Vec<Vec<f32>>,
}

/// Log-probs, the SFT loss and its gradients on a ragged packed batch (one sequence crosses
/// a 64-row attention tile), then the parameters after one AdamW step.
fn step<B: Backend>(be: &B) -> Step {
    let cfg = config();
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 5);
    let mut model = Qwen2::from_host(be, cfg, layout, &host);
    let seqs = [random_ids(13, 97, 1), random_ids(70, 97, 2), random_ids(5, 97, 3)];
    let batch = Packed::new(&seqs);
    let (targets, has) = batch.next_token_targets();
    let mut acts = None;
    model.forward(be, &batch, &mut acts).unwrap();
    let (lp, _) = model.token_logprobs(be, acts.as_ref().unwrap(), &targets, 1.0);
    drop(acts);
    let mut loss_fn = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    let mut ws = Workspace::new(&model, be);
    let loss = micro_step(be, &model, &batch, &mut loss_fn, &mut ws).unwrap();
    let grads_host = ws.grads.iter().map(|g| be.download(g)).collect();
    let mut opt = AdamW::new(be, &model.params, AdamwConfig::default());
    opt.step(be, &mut model.params, &ws.grads, 1e-3);
    Step { lp, loss, grads: grads_host, params: model.to_host(be) }
}

fn emu(p: Precision) -> CudaBackend<EmuDevice> {
    CudaBackend::emulator().with_precision(p).unwrap()
}

#[test]
fn bf16_step_on_the_emulator_is_within_the_documented_tolerance_of_the_cpu() {
    let cpu = step(&Cpu);
    let bf = step(&emu(Precision::Bf16));
    let e_lp = rel_l2(&bf.lp, &cpu.lp);
    let e_loss = ((bf.loss - cpu.loss) / cpu.loss).abs();
    let names: Vec<String> =
        ParamLayout::new(&config()).specs.iter().map(|s| s.name.clone()).collect();
    let mut worst = (0.0f64, String::new());
    for ((n, a), b) in names.iter().zip(&bf.grads).zip(&cpu.grads) {
        let e = rel_l2(a, b);
        if e > worst.0 {
            worst = (e, n.clone());
        }
        assert!(e <= 3e-2, "bf16 gradient of {n}: rel L2 {e:.3e}");
    }
    let e_p = bf.params.iter().zip(&cpu.params).map(|(a, b)| rel_l2(a, b)).fold(0.0, f64::max);
    println!("ERR bf16 vs cpu f32: log-probs {e_lp:.3e}, loss {e_loss:.3e}, worst gradient {:.3e} ({}), params after AdamW {e_p:.3e}", worst.0, worst.1);
    assert!(e_lp <= 1e-2, "log-probs rel L2 {e_lp:.3e}");
    assert!(e_loss <= 1e-2, "loss relative error {e_loss:.3e}");
    // Adam's first step moves each weight by about lr * sign(gradient): a gradient element near
    // zero that bf16 noise flips moves its weight 2 lr the other way, hence the looser bound.
    assert!(e_p <= 1e-2, "parameters after one step: rel L2 {e_p:.3e}");
    // bf16 is really on: the log-probs are not the f32 ones.
    assert!(e_lp > 1e-5, "bf16 log-probs equal the f32 ones ({e_lp:.1e}): is bf16 running?");
}

#[test]
fn f32_step_on_the_emulator_matches_the_cpu() {
    let cpu = step(&Cpu);
    let f = step(&emu(Precision::F32));
    let e_lp = rel_l2(&f.lp, &cpu.lp);
    let e_g = f.grads.iter().zip(&cpu.grads).map(|(a, b)| rel_l2(a, b)).fold(0.0, f64::max);
    println!("ERR f32 emu vs cpu: log-probs {e_lp:.3e}, worst gradient {e_g:.3e}");
    assert!(e_lp <= 1e-5 && e_g <= 1e-5, "log-probs {e_lp:.3e}, gradients {e_g:.3e}");
}

#[test]
fn bf16_gemm_on_the_emulator_rounds_the_operands_as_gemmex_reads_them() {
    let (m, n, k) = (7, 19, 33);
    let a = random_f32(m * k, 1);
    let b = random_f32(n * k, 2);
    let round = |v: &[f32]| v.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect::<Vec<_>>();
    let mut want = vec![0.0; m * n];
    Cpu.matmul(&mut want, &round(&a), Tr::N, &round(&b), Tr::T, m, n, k, 0.0);
    let mut exact = vec![0.0; m * n];
    Cpu.matmul(&mut exact, &a, Tr::N, &b, Tr::T, m, n, k, 0.0);
    let be = emu(Precision::Bf16);
    let (da, db) = (be.upload(&a), be.upload(&b));
    let mut out = be.upload(&vec![f32::NAN; m * n]);
    be.matmul(&mut out, &da, Tr::N, &db, Tr::T, m, n, k, 0.0);
    let got = be.download(&out);
    assert!(
        got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
        "not the product of the rounded operands"
    );
    assert!(rel_l2(&got, &exact) > 1e-4, "bf16 rounding had no effect");
    let f = emu(Precision::F32);
    let (da, db) = (f.upload(&a), f.upload(&b));
    let mut out = f.upload(&vec![f32::NAN; m * n]);
    f.matmul(&mut out, &da, Tr::N, &db, Tr::T, m, n, k, 0.0);
    assert_eq!(f.download(&out), exact);
}

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// bf16 with the weights' bf16 shadows (made once per optimizer step) or without (both GEMM
/// operands converted on every call).
fn emu_shadows(on: bool) -> CudaBackend<EmuDevice> {
    CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]).with_bf16_shadows(on))
        .with_precision(Precision::Bf16)
        .unwrap()
}

/// The losses of `n` SFT steps and the parameters after them.
fn train_steps<B: Backend>(be: &B, n: usize) -> (Vec<f64>, Vec<Vec<f32>>) {
    let cfg = config();
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 9);
    let mut model = Qwen2::from_host(be, cfg, layout, &host);
    let seqs = [random_ids(21, 97, 4), random_ids(8, 97, 5)];
    let batch = Packed::new(&seqs);
    let (_, has) = batch.next_token_targets();
    let mut loss_fn = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    let mut opt = AdamW::new(be, &model.params, AdamwConfig::default());
    let mut ws = Workspace::new(&model, be);
    let mut losses = Vec::new();
    for _ in 0..n {
        ws.zero_grads(be);
        losses.push(micro_step(be, &model, &batch, &mut loss_fn, &mut ws).unwrap());
        opt.step(be, &mut model.params, &ws.grads, 1e-2);
    }
    (losses, model.to_host(be))
}

#[test]
fn bf16_weight_shadows_give_the_bits_of_converting_per_call() {
    let (on, off) = (emu_shadows(true), emu_shadows(false));
    let (a, b) = (train_steps(&on, 3), train_steps(&off, 3));
    assert_eq!(a.0, b.0, "losses differ");
    for (i, (x, y)) in a.1.iter().zip(&b.1).enumerate() {
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "parameter {i} differs");
    }
    let hits = on.memory_stats().unwrap().shadow_hits;
    println!("bf16 GEMM operands read from shadows over 3 steps: {hits}");
    // Steps 2 and 3 read every projection weight (7 per layer, forward: one operand each;
    // backward dX: one each) and the head from shadows.
    assert!(hits >= 2 * 2 * (7 * 2 + 1), "only {hits} shadow hits");
    assert_eq!(off.memory_stats().unwrap().shadow_hits, 0);
    assert_eq!(off.device().bf16_shadow_count(), 0);
}

#[test]
fn a_weight_written_or_freed_after_the_optimizer_loses_its_shadow() {
    let (m, n, k) = (5, 9, 16);
    let x = random_f32(m * k, 3);
    let w0 = random_f32(n * k, 4);
    let run = |be: &CudaBackend<EmuDevice>| -> Vec<Vec<f32>> {
        let dx = be.upload(&x);
        let mut w = be.upload(&w0);
        let (g, mut mo, mut v) =
            (be.upload(&random_f32(n * k, 5)), be.zeros(n * k), be.zeros(n * k));
        let hp = mmr1_fast::backend::AdamwStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 1,
            grad_scale: 1.0,
        };
        let mut outs = Vec::new();
        let product = |w: &mmr1_fast::backend::cuda::DevBuf<_>| {
            let mut out = be.upload(&vec![f32::NAN; m * n]);
            be.matmul(&mut out, &dx, Tr::N, w, Tr::T, m, n, k, 0.0);
            be.download(&out)
        };
        be.adamw(&mut w, &g, &mut mo, &mut v, hp); // shadow made
        outs.push(product(&w));
        be.scale(&mut w, 3.0); // written by another kernel: the shadow must go
        outs.push(product(&w));
        be.adamw(&mut w, &g, &mut mo, &mut v, hp);
        drop(w); // freed: its memory (and address) comes back for the next buffer
        let w2 = be.upload(&random_f32(n * k, 6));
        outs.push(product(&w2));
        outs
    };
    let (on, off) = (emu_shadows(true), emu_shadows(false));
    let (a, b) = (run(&on), run(&off));
    // x (uploaded, never written) is converted at its first product and read from its shadow
    // in the next two; w's shadow from the optimizer serves the first product only; w2, a
    // new upload at w's old address, gets a fresh shadow of its own at its first use.
    assert_eq!(on.memory_stats().unwrap().shadow_hits, 3);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "product {i} used a stale shadow"
        );
    }
    assert_eq!(on.device().bf16_shadow_count(), 0, "freed buffers keep no shadow");
}

#[test]
fn loaded_weights_are_converted_once_for_inference_too() {
    let seqs = [random_ids(11, 97, 7), random_ids(6, 97, 8)];
    let forward_twice = |be: &CudaBackend<EmuDevice>| {
        let cfg = config();
        let layout = ParamLayout::new(&cfg);
        let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 2);
        let model = Qwen2::from_host(be, cfg, layout, &host);
        let batch = Packed::new(&seqs);
        let (targets, _) = batch.next_token_targets();
        let mut out = Vec::new();
        for _ in 0..2 {
            let mut acts = None;
            model.forward(be, &batch, &mut acts).unwrap();
            out.push(model.token_logprobs(be, acts.as_ref().unwrap(), &targets, 1.0).0);
        }
        out
    };
    let (on, off) = (emu_shadows(true), emu_shadows(false));
    let (a, b) = (forward_twice(&on), forward_twice(&off));
    assert_eq!(a, b);
    // The second forward reads all 7 projections of both layers and the head from shadows.
    let hits = on.memory_stats().unwrap().shadow_hits;
    println!("shadow hits over two forwards: {hits}");
    assert!(hits > 2 * 7, "{hits} shadow hits");
}

/// bf16 with weight shadows on and activation shadows (`MMR1_ACT_SHADOWS`) on or off.
fn emu_act(on: bool, profile: bool) -> CudaBackend<EmuDevice> {
    emu_producers(on, true, profile)
}

/// `emu_act` with the producers writing the bf16 copies of their outputs (RMSNorm, SwiGLU
/// and its backward: src/backend/cuda/producer_shadows.rs) or not.
fn emu_producers(act: bool, producers: bool, profile: bool) -> CudaBackend<EmuDevice> {
    let mut dev = EmuDevice::with_schedules(&[Schedule::Forward])
        .with_bf16_shadows(true)
        .with_act_shadows(act);
    if profile {
        dev = dev.with_profile();
    }
    let b = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
    b.with_producer_shadows(producers)
}

/// What an SFT run leaves: the losses and gradients of each step, the parameters after
/// them, and the log-probs of an inference forward after the last step.
struct Run {
    losses: Vec<f64>,
    grads: Vec<Vec<Vec<f32>>>,
    params: Vec<Vec<f32>>,
    lp: Vec<f32>,
}

fn sft_run<B: Backend>(be: &B, steps: usize) -> Run {
    sft_run_of(be, config(), steps)
}

fn sft_run_of<B: Backend>(be: &B, cfg: Qwen2Config, steps: usize) -> Run {
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 9);
    let mut model = Qwen2::from_host(be, cfg, layout, &host);
    // One sequence crosses a 64-row flash tile.
    let seqs = [random_ids(21, 97, 4), random_ids(70, 97, 5), random_ids(8, 97, 6)];
    let batch = Packed::new(&seqs);
    let (targets, has) = batch.next_token_targets();
    let mut loss_fn = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    let mut opt = AdamW::new(be, &model.params, AdamwConfig::default());
    let mut ws = Workspace::new(&model, be);
    let (mut losses, mut grads) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        ws.zero_grads(be);
        losses.push(micro_step(be, &model, &batch, &mut loss_fn, &mut ws).unwrap());
        grads.push(ws.grads.iter().map(|g| be.download(g)).collect());
        opt.step(be, &mut model.params, &ws.grads, 1e-2);
    }
    let mut acts = None;
    model.forward(be, &batch, &mut acts).unwrap();
    let (lp, _) = model.token_logprobs(be, acts.as_ref().unwrap(), &targets, 1.0);
    Run { losses, grads, params: model.to_host(be), lp }
}

/// Two runs of `sft_run` gave the same losses, gradients, parameters and log-probs, bit for bit.
fn assert_same_runs(a: &Run, b: &Run) {
    assert!(a.losses.iter().zip(&b.losses).all(|(x, y)| x.to_bits() == y.to_bits()), "losses");
    for (s, (ga, gb)) in a.grads.iter().zip(&b.grads).enumerate() {
        for (i, (x, y)) in ga.iter().zip(gb).enumerate() {
            assert!(same_bits(x, y), "step {s}: gradient of parameter {i} differs");
        }
    }
    for (i, (x, y)) in a.params.iter().zip(&b.params).enumerate() {
        assert!(same_bits(x, y), "parameter {i} differs after {} steps", a.grads.len());
    }
    assert!(same_bits(&a.lp, &b.lp), "inference log-probs differ");
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The flash kernels' variants train alike, bit for bit, through the whole model at head dim
/// 64 (where the wide and pipelined forwards and the pipelined dQ exist): f32 tile loads, bf16
/// copies, bf16 copies with the wide or the pipelined forward or the pipelined dQ kernel;
/// losses, every gradient of 2 SFT steps, the parameters and an inference forward.
#[test]
fn flash_variants_train_alike() {
    let mut cfg = config();
    (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) = (128, 2, Some(1));
    // Calls of the forward's f32-tile, bf16, wide and pipelined kernels and of the pipelined dQ.
    let run = |io: FlashIo, fwd: FlashFwd, dq: FlashDq| {
        let mut b = emu_act(true, true);
        b.set_flash_io(io);
        b.set_flash_fwd(fwd);
        b.set_flash_dq(dq);
        let r = sft_run_of(&b, cfg.clone(), 2);
        let ran = b.kernel_profile();
        let calls = |n: &str| ran.iter().find(|k| k.name == n).map_or(0, |k| k.calls);
        let names = [
            "flash_fwd_d64",
            "flash_fwd_bf16_d64",
            "flash_fwd_wide_bf16_d64",
            "flash_fwd_pipe_bf16_d64",
            "flash_bwd_dq_pipe_bf16_d64",
        ];
        (r, names.map(calls))
    };
    let (n, plain) = (FlashFwd::Narrow, FlashDq::Plain);
    let (base, ran) = run(FlashIo::F32, n, plain);
    assert!(ran[0] > 0 && ran[1..].iter().sum::<u64>() == 0, "f32 tile loads: {ran:?}");
    // Each variant: the one forward kernel it names (and the pipelined dQ only when asked).
    for (fwd, dq, k) in [(n, plain, 1), (FlashFwd::Wide, plain, 2), (FlashFwd::Pipe, plain, 3)] {
        let (got, ran) = run(FlashIo::Bf16, fwd, dq);
        let others: u64 = (0..4).filter(|&i| i != k).map(|i| ran[i]).sum();
        assert!(ran[k] > 0 && others + ran[4] == 0, "{fwd:?}: {ran:?}");
        assert_same_runs(&got, &base);
    }
    // The pipelined dQ kernel in the backward, with the default forward.
    let (got, ran) = run(FlashIo::Bf16, n, FlashDq::Pipe);
    assert!(ran[1] > 0 && ran[4] > 0, "pipelined dQ: {ran:?}");
    assert_same_runs(&got, &base);
}

#[test]
fn activation_shadows_give_the_bits_of_converting_per_call() {
    let (on, off) = (emu_act(true, false), emu_act(false, false));
    let (a, b) = (sft_run(&on, 3), sft_run(&off, 3));
    assert_same_runs(&a, &b);
    let (sa, sb) = (on.memory_stats().unwrap(), off.memory_stats().unwrap());
    println!(
        "MEM activation shadows on: peak {} B in use, {} shadow hits; off: peak {} B, {} hits",
        sa.peak_in_use_bytes, sa.shadow_hits, sb.peak_in_use_bytes, sb.shadow_hits
    );
    assert!(sa.shadow_hits > sb.shadow_hits, "activation shadows were not read");
    // The memory they cost: at most the bf16 copies of what keeps a shadow between steps
    // (each layer's xn1, xn2, att, act; the scratch's dgate, dup, dq, dk, dv), by size class,
    // twice over (the allocator may serve a request from a free block up to twice its class).
    let c = config();
    let (t, d, i) = (99, c.hidden_size, c.intermediate_size);
    let kvd = c.n_kv_heads() * c.head_dim();
    let class = |values: usize| mmr1_fast::backend::cuda::alloc::size_class(2 * values) as u64;
    let per_layer = 3 * class(t * d) + class(t * i);
    let scratch = 2 * class(t * i) + class(t * d) + 2 * class(t * kvd);
    let bound = 2 * (c.num_hidden_layers as u64 * per_layer + scratch);
    let growth = sa.peak_in_use_bytes.saturating_sub(sb.peak_in_use_bytes);
    println!(
        "MEM peak growth {growth} B ({:.1}%), bound {bound} B",
        100.0 * growth as f64 / sb.peak_in_use_bytes as f64
    );
    assert!(growth <= bound, "activation shadows cost {growth} B at the peak, more than {bound}");
}

/// The producers' bf16 copies are the bits the GEMMs' conversions made: three SFT steps with
/// them and without (both keeping activation shadows) give the same losses, gradients,
/// parameters and log-probs bit for bit.
#[test]
fn producer_shadows_give_the_bits_of_the_gemms_conversions() {
    let (a, b) = (
        sft_run(&emu_producers(true, true, false), 3),
        sft_run(&emu_producers(true, false, false), 3),
    );
    assert_same_runs(&a, &b);
}

/// Conversions (`f32_to_bf16_x8` launches) of the second SFT step (zeroing the gradients,
/// forward, backward, AdamW) of `sft_run`'s model and batch, and how many buffers keep a
/// shadow between steps.
fn conversions_of_a_steady_step(act_shadows: bool, producers: bool) -> (u64, usize) {
    conversions_of_a_steady_step_on(emu_producers(act_shadows, producers, true))
}

fn conversions_of_a_steady_step_on(be: CudaBackend<EmuDevice>) -> (u64, usize) {
    use mmr1_fast::backend::profile::since;
    let cfg = config();
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::Sensitive { std: 0.1 }, 9);
    let mut model = Qwen2::from_host(&be, cfg, layout, &host);
    let seqs = [random_ids(21, 97, 4), random_ids(70, 97, 5), random_ids(8, 97, 6)];
    let batch = Packed::new(&seqs);
    let (_, has) = batch.next_token_targets();
    let mut loss_fn = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    let mut opt = AdamW::new(&be, &model.params, AdamwConfig::default());
    let mut ws = Workspace::new(&model, &be);
    let mut per_step = Vec::new();
    for _ in 0..3 {
        let before = be.kernel_profile();
        ws.zero_grads(&be);
        micro_step(&be, &model, &batch, &mut loss_fn, &mut ws).unwrap();
        opt.step(&be, &mut model.params, &ws.grads, 1e-2);
        let step = since(&before, &be.kernel_profile());
        per_step.push(step.iter().filter(|k| k.name == "f32_to_bf16_x8").map(|k| k.calls).sum());
    }
    assert_eq!(per_step[1], per_step[2], "steps 2 and 3 convert alike: {per_step:?}");
    (per_step[1], be.device().bf16_shadow_count())
}

/// The conversions a steady bf16 SFT step makes, derived from the layer structure
/// (src/model/forward.rs `layer_forward`, backward.rs `layer_backward`,
/// backend/chunked_logprob.rs), for `layers` layers, `params` parameter tensors, `fwd_chunks`
/// head chunks in the forward and `bwd_chunks` in the backward:
/// - no weight is converted: AdamW writes each weight's shadow in its own pass
///   (`adamw_many_f32`; a conversion launch per parameter tensor before), and no GEMM
///   converts a weight;
/// - forward, per layer, the activation operand of the 7 projections: xn1 for q, k, v; att
///   for o; xn2 for gate, up; act for down. Without activation shadows each GEMM converts
///   its operand (7); with them each distinct buffer once (4); with the producers writing
///   the bf16 copy themselves (src/backend/cuda/producer_shadows.rs: the RMSNorms write xn1
///   and xn2's, SwiGLU act's, flash attention att's), none;
/// - backward, per layer, 7 dX GEMMs (one activation-gradient operand each: dresid, dgate,
///   dup, dresid again after the add, dq, dk, dv) and 7 dW GEMMs (that gradient and the
///   saved activation): 7 + 14 = 21 without; with, each of the 7 gradients once (its dW GEMM
///   finds the dX GEMM's shadow) and no saved activation (their forward shadows survive:
///   nothing writes xn1, xn2, act between the forward and their last use, and att's last
///   use, o's dW GEMM, comes before the attention backward takes it as an argument): 7;
///   with the producers, less dgate and dup (SwiGLU's backward writes their copies) and
///   both dresids (the norm backwards that add into it write its copy,
///   `rmsnorm_backward_add`), but the top layer's first one, which the final norm's backward
///   writes without a copy, and dq, dk, dv (RoPE's backward writes their copies,
///   `qkv_backward_epilogue`, and the bias gradients between only read them): none a layer
///   and 1;
/// - the head, per chunk: the gathered hidden rows `h` in the forward (1 either way; an SFT
///   step has no forward chunk: its head runs in one pass, `Workspace::head_one_pass`); in
///   the backward `h` for the logits, d logits for d hidden, and both for d lm_head: 4
///   without, 2 with, 1 with the producers (the log-prob backward writes d logits' copy);
/// - flash attention, per layer: the bf16 copies its kernels read (`FlashIo::Bf16`,
///   src/backend/cuda/flash.rs): K and V in the forward, Q, K and V in the backward (dO's is
///   written by the kernel that reads dO for D = rowsum(dO * O), when the spans cover every
///   row, as a packed batch's do): 5; with the producers, none (the q/k/v epilogue writes
///   their copies, which the forward keeps: it passes Q read-only).
fn predicted_conversions(act: bool, producers: bool, layers: u64, fwd: u64, bwd: u64) -> u64 {
    let (layer_fwd, layer_bwd, head_bwd, top, flash_copies) = match (act, producers) {
        (false, _) => (7, 21, 4, 0, 5),
        (true, false) => (4, 7, 2, 0, 5),
        (true, true) => (0, 0, 1, 1, 0),
    };
    layers * (layer_fwd + layer_bwd + flash_copies) + top + fwd + head_bwd * bwd
}

#[test]
fn activation_shadows_remove_the_conversions_the_layer_structure_predicts() {
    let cfg = config();
    let layers = cfg.num_hidden_layers as u64;
    let params = ParamLayout::new(&cfg).specs.len() as u64;
    // 96 trained rows fit one head chunk at this vocabulary; SFT's head has no forward chunk.
    let ((on, kept_on), (off, kept_off)) =
        (conversions_of_a_steady_step(true, true), conversions_of_a_steady_step(false, true));
    let (act_only, kept_act_only) = conversions_of_a_steady_step(true, false);
    println!(
        "CONVERSIONS per steady step: {off} without activation shadows, {act_only} with them, \
         {on} with the producers writing theirs"
    );
    assert_eq!(off, predicted_conversions(false, true, layers, 0, 1));
    assert_eq!(act_only, predicted_conversions(true, false, layers, 0, 1));
    assert_eq!(on, predicted_conversions(true, true, layers, 0, 1));
    // Activation shadows save 17 a layer (7 - 4 forward, 21 - 7 backward) and 2 a head
    // chunk; the producers writing xn1, xn2, att, act, dgate, dup, the two dresids', dq's,
    // dk's, dv's and the flash kernels' q, k, v copies 16 more a layer, less the top layer's
    // first dresid, and d logits' 1 more a chunk.
    let (top_dresid, d_logits) = (1, 1);
    assert_eq!(
        (off - act_only, act_only - on),
        (layers * 17 + 2, layers * 16 - top_dresid + d_logits)
    );
    // Stored as f32 with shadows (`MMR1_BF16_OPERANDS=0`), xn1, xn2 and act convert alike.
    let (f32_stored, kept_f32_stored) =
        conversions_of_a_steady_step_on(emu_producers(true, true, true).with_bf16_operands(false));
    assert_eq!(f32_stored, on, "bf16 storage changes no conversion");
    // Between steps: every weight (AdamW wrote its shadow); with activation shadows also each
    // layer's xn1, xn2 and act (the workspace keeps the activations; the next forward's
    // writes end them) and the last layer backward's dgate, dup, dq, dk, dv (the scratch's
    // next writes end them). No head buffer keeps one: the chunk buffers are freed. With the
    // producers, also each layer's q, k, v (the epilogue's copies for the flash kernels,
    // until the next forward's GEMMs write the buffers); and xn1, xn2, act, dgate and dup are
    // stored as bf16 alone (`operand_buf`), with no f32 values to shadow, unless
    // `MMR1_BF16_OPERANDS=0`.
    let (params, layers) = (params as usize, layers as usize);
    assert_eq!(kept_off, params);
    assert_eq!(kept_act_only, params + 3 * layers + 5);
    assert_eq!(kept_f32_stored, params + 6 * layers + 5);
    assert_eq!(kept_on, params + 3 * layers + 3);
}

/// `operand_buf` storage (bf16 alone for xn1, xn2, act, dgate and dup) gives the bits of f32
/// storage with the producers' shadows: three SFT steps give the same losses, gradients,
/// parameters and log-probs; and the peak in use falls by the f32 values that nothing read.
#[test]
fn bf16_operands_give_the_bits_of_f32_storage_and_lower_the_peak() {
    let (on, off) = (
        emu_producers(true, true, false).with_bf16_operands(true),
        emu_producers(true, true, false).with_bf16_operands(false),
    );
    let (a, b) = (sft_run(&on, 3), sft_run(&off, 3));
    assert_same_runs(&a, &b);
    let (pa, pb) = (
        on.memory_stats().unwrap().peak_in_use_bytes,
        off.memory_stats().unwrap().peak_in_use_bytes,
    );
    // Each layer's three buffers and the backward scratch's dgate and dup keep 2 of their 4
    // bytes a value (by size class): the peak, in the backward, which holds every layer's
    // activations and the scratch, falls by at least that.
    let c = config();
    let (t, d, i) = (99, c.hidden_size, c.intermediate_size);
    let class = |bytes: usize| mmr1_fast::backend::cuda::alloc::size_class(bytes) as u64;
    let (saved_d, saved_i) =
        (class(4 * t * d) - class(2 * t * d), class(4 * t * i) - class(2 * t * i));
    let want = c.num_hidden_layers as u64 * (2 * saved_d + saved_i) + 2 * saved_i;
    println!("MEM bf16 operands: peak {pa} B in use, f32 storage {pb} B (saving at least {want})");
    assert!(pb >= pa + want, "peak {pa} B with bf16 operands, {pb} B without: saved < {want}");
}
