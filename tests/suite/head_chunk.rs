//! The training head through the chunked log-prob path (`model::head`,
//! `backend::chunked_logprob`): the log-probs and the gradients of a micro-step do not depend
//! on the chunk size (bit for bit on the CPU, whose GEMM is batch-invariant; within f32
//! rounding on the emulator, against the CPU), and the head's memory is bounded by the chunk:
//! peak device memory on the emulator at a vocabulary of 4096.
#![cfg(feature = "emu")]

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::{Packed, Qwen2};
use mmr1_fast::train::{forward_logprobs, micro_step, SftLoss, Workspace};

fn model_on<B: Backend>(be: &B, vocab: usize, seed: u64) -> Qwen2<B> {
    random_model_on(be, tiny_config(vocab, false), seed)
}

/// Log-probs, entropies and the gradients of one SFT micro-step (prompt rows untrained).
fn step<B: Backend>(be: &B, model: &Qwen2<B>, batch: &Packed, chunk: usize) -> Vec<Vec<f32>> {
    let mut ws = Workspace::new(model, be);
    ws.logit_chunk = chunk;
    let (_, lp, ent) = forward_logprobs(be, model, batch, 1.0 / 0.7, &mut ws).unwrap();
    let (_, has) = batch.next_token_targets();
    // Rows 0..3 of every sequence are an untrained prompt.
    let mut trained = has.clone();
    for sp in &batch.spans {
        trained[sp.q_start..sp.q_start + 3.min(sp.q_len)].fill(false);
    }
    let mut loss = SftLoss::new(&trained, 50);
    let l = micro_step(be, model, batch, &mut loss, &mut ws).unwrap();
    let mut out = vec![lp, ent, vec![l as f32]];
    out.extend(ws.grads.iter().map(|g| be.download(g)));
    out
}

#[test]
fn chunk_size_changes_nothing_on_the_cpu_and_the_emulator_agrees() {
    let v = 53;
    let seqs = [random_ids(9, v, 1), random_ids(14, v, 2), random_ids(4, v, 3)];
    let batch = Packed::new(&seqs);
    let model = model_on(&Cpu, v, 9);
    let whole = step(&Cpu, &model, &batch, model.logit_chunk_rows());
    // Output index of the lm_head gradient: summed over rows, chunk by chunk, so its
    // rounding follows the chunking. Every other output is per row, or downstream of d
    // hidden, which is per row.
    let head = 3 + model.layout.head();
    for chunk in [1, 5, 16] {
        let got = step(&Cpu, &model, &batch, chunk);
        for (k, (a, b)) in got.iter().zip(&whole).enumerate() {
            if k == head {
                let e = rel_l2(a, b);
                assert!(e < 1e-6, "chunk {chunk}: lm_head gradient differs by {e:.2e}");
            } else {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "chunk {chunk}: output {k} differs from the one-chunk run");
            }
        }
    }
    let emu = CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]));
    let em = model_on(&emu, v, 9);
    for chunk in [5, 64] {
        let got = step(&emu, &em, &batch, chunk);
        for (k, (a, b)) in got.iter().zip(&whole).enumerate() {
            let e = rel_l2(a, b);
            println!("emu chunk {chunk}: output {k} rel L2 {e:.2e}");
            assert!(e < 1e-5, "emu chunk {chunk}: output {k} differs from the CPU by {e:.2e}");
        }
    }
}

const VOCAB: usize = 4096;

/// Peak bytes in use on a fresh emulator: the log-prob pass GRPO runs for `logp_old`, a
/// training micro-step, then the next update's log-prob pass (the workspace still holds the
/// backward scratch).
fn peak(chunk: Option<usize>) -> u64 {
    let be = CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]));
    let model = model_on(&be, VOCAB, 5);
    let mut ws = Workspace::new(&model, &be);
    if let Some(c) = chunk {
        ws.logit_chunk = c;
    }
    let seqs = [random_ids(150, VOCAB, 1), random_ids(106, VOCAB, 2)];
    let batch = Packed::new(&seqs);
    let (_, has) = batch.next_token_targets();
    let mut loss = SftLoss::new(&has, has.iter().filter(|&&b| b).count());
    forward_logprobs(&be, &model, &batch, 1.0, &mut ws).unwrap();
    micro_step(&be, &model, &batch, &mut loss, &mut ws).unwrap();
    forward_logprobs(&be, &model, &batch, 1.0, &mut ws).unwrap();
    let s = be.memory_stats().unwrap();
    println!("chunk {chunk:?}: {}; peak in use {} B", s.summary(), s.peak_in_use_bytes);
    s.peak_in_use_bytes
}

/// 256 tokens at vocab 4096: one `[256 x 4096]` f32 logit buffer is 4 MiB. The head's
/// buffers live only while it runs, so the peak is the model state plus at most two chunks
/// of logits (logits and their gradient in the backward), and a 32-row chunk takes 7/8 of
/// that off.
#[test]
fn head_memory_is_bounded_by_the_chunk() {
    let full = peak(None);
    let small = peak(Some(32));
    let logits = (256 * VOCAB * 4) as u64;
    println!(
        "peak: default chunk {full} B, 32-row chunk {small} B; one [256 x 4096] buffer {logits} B"
    );
    // Measured before this path (the model's own chunk loop, logits kept in the backward
    // scratch through the step, plus a forward chunk on top): 17,912,832 B peak; now
    // 13,668,352 B at the default chunk (4096 rows >= 256) and 6,240,768 B at 32 rows.
    // At most two full-size logit buffers are live at once (logits and their gradient).
    assert!(full - small >= 2 * logits * 7 / 8 - logits / 8, "{full} - {small}");
    assert!(full - small <= 2 * logits + logits / 4, "{full} - {small}");
}

/// The loss and every gradient of one SFT micro-step (rows 0..3 of each sequence an untrained
/// prompt) with the head in one pass or two (`Workspace::head_one_pass`), and what it launched.
fn sft_step<B: Backend>(
    be: &B,
    model: &Qwen2<B>,
    batch: &Packed,
    chunk: usize,
    one_pass: bool,
) -> (Vec<Vec<f32>>, Vec<mmr1_fast::backend::profile::KernelTime>) {
    let mut ws = Workspace::new(model, be);
    (ws.logit_chunk, ws.head_one_pass) = (chunk, one_pass);
    let (_, mut trained) = batch.next_token_targets();
    for sp in &batch.spans {
        trained[sp.q_start..sp.q_start + 3.min(sp.q_len)].fill(false);
    }
    let mut loss = SftLoss::new(&trained, 50);
    let before = be.kernel_profile();
    let l = micro_step(be, model, batch, &mut loss, &mut ws).unwrap();
    let ran = mmr1_fast::backend::profile::since(&before, &be.kernel_profile());
    let mut out = vec![vec![l as f32]];
    out.extend(ws.grads.iter().map(|g| be.download(g)));
    (out, ran)
}

/// Two steps' outputs (`outputs`: what their first vectors hold) agree bit for bit.
fn same_bits(a: &[Vec<f32>], b: &[Vec<f32>], tag: &str, outputs: &str) {
    assert_eq!(a.len(), b.len());
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        let eq = x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(eq, "{tag}: output {k} ({outputs}) differs");
    }
}

/// Launches of the kernels whose names start with `pre` in a profile.
fn calls(ran: &[mmr1_fast::backend::profile::KernelTime], pre: &str) -> u64 {
    ran.iter().filter(|k| k.name.starts_with(pre)).map(|k| k.calls).sum()
}

/// SFT's loss is known before its log-probs (`TokenLoss::constant_dlp`), so a step takes
/// them from the head's backward instead of a forward pass over the head: the loss and every
/// gradient are the bits of the two passes, on the CPU and on the emulator in f32 and bf16 (where
/// d logits is stored as bf16 alone: the bits of f32 storage with a bf16 copy too), in chunks of
/// 5 trained rows (the last one ragged, the prompt rows between skipped), at a vocabulary the
/// log-prob kernels walk a logit at a time (53) and one they walk in groups of 4 (64); the
/// emulator's step launches no forward log-prob kernel and one logits GEMM a forward chunk
/// fewer.
#[test]
fn sft_head_in_one_pass_gives_the_bits_of_two() {
    use mmr1_fast::backend::precision::Precision;
    let same = |a: &[Vec<f32>], b: &[Vec<f32>], tag: &str| same_bits(a, b, tag, "0: the loss");
    let chunk = 5;
    for v in [53, 64] {
        let seqs = [random_ids(9, v, 1), random_ids(14, v, 2), random_ids(4, v, 3)];
        let batch = Packed::new(&seqs);
        let cpu = model_on(&Cpu, v, 9);
        let (one, _) = sft_step(&Cpu, &cpu, &batch, chunk, true);
        let (two, _) = sft_step(&Cpu, &cpu, &batch, chunk, false);
        same(&one, &two, &format!("vocab {v}, cpu: one pass vs two"));
        assert!(one[0][0].is_finite() && one[0][0] > 0.0, "a cross-entropy: {}", one[0][0]);
        for p in [Precision::F32, Precision::Bf16] {
            let dev = EmuDevice::with_schedules(&[Schedule::Forward]).with_profile();
            let emu = CudaBackend::with_device(dev).with_precision(p).unwrap();
            let em = model_on(&emu, v, 9);
            let (one, ran1) = sft_step(&emu, &em, &batch, chunk, true);
            let (two, ran2) = sft_step(&emu, &em, &batch, chunk, false);
            let tag = format!("vocab {v}, emulator {p}");
            same(&one, &two, &format!("{tag}: one pass vs two"));
            if p == Precision::Bf16 {
                let dev = EmuDevice::with_schedules(&[Schedule::Forward]);
                let f32_stored = CudaBackend::with_device(dev)
                    .with_precision(p)
                    .unwrap()
                    .with_bf16_operands(false);
                let em = model_on(&f32_stored, v, 9);
                let (stored, _) = sft_step(&f32_stored, &em, &batch, chunk, true);
                same(&one, &stored, &format!("{tag}: bf16 d logits vs f32 with a bf16 copy"));
            }
            // The two-pass forward computes the trained rows only (`TokenLoss::rows`), in
            // chunks of 5 as the backward does: the tokens less 3 prompt rows and the last row
            // of each sequence.
            let trained = batch.tokens() as u64 - 4 * batch.spans.len() as u64;
            let chunks = trained.div_ceil(chunk as u64);
            assert_eq!(calls(&ran1, "logprobs_f32"), 0, "{tag}: a forward log-prob launch");
            assert_eq!(calls(&ran2, "logprobs_f32"), chunks, "{tag}");
            assert_eq!(calls(&ran1, "logprobs_bwd"), chunks, "{tag}");
            assert_eq!(calls(&ran2, "logprobs_bwd"), chunks, "{tag}");
            let gemms_saved = calls(&ran2, "gemm_") - calls(&ran1, "gemm_");
            assert_eq!(gemms_saved, chunks, "{tag}: one logits GEMM a forward chunk");
        }
    }
}

/// One GRPO micro-step of `model` on `seqs` (responses after 3 prompt tokens each), the head in
/// chunks of `chunk` rows, in one pass or two: the loss, the metrics' clip fraction, KL and
/// entropy, and every gradient; and the kernels it ran.
#[allow(clippy::too_many_arguments)]
fn grpo_step<B: mmr1_fast::backend::rl_ops::RlOps>(
    be: &B,
    model: &Qwen2<B>,
    seqs: &[Vec<u32>],
    cfg: &mmr1_fast::rl::grpo::LossConfig,
    chunk: usize,
    one_pass: bool,
) -> (Vec<Vec<f32>>, Vec<mmr1_fast::backend::profile::KernelTime>) {
    use mmr1_fast::rl::grpo::{LossInputs, Normalizer};
    use mmr1_fast::rl::grpo_token_loss::GrpoTokenLoss;
    use mmr1_fast::train::LossBatch;
    let lb = LossBatch::pack(seqs, |_, pos| pos >= 3);
    let n = lb.rows.len();
    // Response boundaries in the loss's token order, and per-token inputs that reach every
    // branch: advantages of both signs per response, a masked token, old and reference
    // log-probs spread around the policy's.
    let mut offsets = vec![0];
    for s in seqs {
        offsets.push(offsets.last().unwrap() + s.len() - 3);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    use rand::{Rng, SeedableRng};
    let old: Vec<f32> = (0..n).map(|_| rng.gen_range(-6.0..-1.0)).collect();
    let reference: Vec<f32> = (0..n).map(|_| rng.gen_range(-6.0..-1.0)).collect();
    let adv_of = [1.3f32, -0.8, 0.5];
    let adv: Vec<f32> =
        (0..n).map(|t| adv_of[offsets.iter().rposition(|&o| o <= t).unwrap() % 3]).collect();
    let mut mask = vec![1.0f32; n];
    mask[2] = 0.0;
    let mut inputs = LossInputs::new(&[], &old, &adv, &mask, &offsets);
    inputs.ref_logp = Some(&reference);
    let norm = Normalizer::count(&mask, &offsets, 16);
    let mut loss = GrpoTokenLoss::new(&lb.rows, inputs, cfg, norm, 1.0 / 0.7);
    let mut ws = Workspace::new(model, be);
    (ws.logit_chunk, ws.head_one_pass) = (chunk, one_pass);
    let before = be.kernel_profile();
    let l = micro_step(be, model, &lb.batch, &mut loss, &mut ws).unwrap();
    let ran = mmr1_fast::backend::profile::since(&before, &be.kernel_profile());
    let m = &loss.metrics;
    let mut out = vec![vec![l as f32, m.clip_frac as f32, m.kl as f32]];
    out.push(vec![m.entropy.unwrap_or(-1.0) as f32]);
    out.extend(ws.grads.iter().map(|g| be.download(g)));
    (out, ran)
}

/// GRPO's token-level losses give a row's gradient from its own log-prob and entropy
/// (`TokenLoss::rowwise`), so a step takes them from the head's backward, chunk by chunk, as
/// SFT does: the loss, its metrics and every gradient are the bits of the two passes, on the
/// CPU and the emulator (f32 and bf16), for the vanilla clip with a KL and an entropy term
/// (MMR1's loss plus an entropy bonus), CISPO with seq-mean-token-sum, and SAPO; GSPO's and
/// seq-mean-token-mean's per-response terms keep the forward's pass (the same bits,
/// trivially). The emulator's one-pass step runs one logits GEMM a chunk fewer.
#[test]
fn grpo_head_in_one_pass_gives_the_bits_of_two() {
    use mmr1_fast::backend::precision::Precision;
    use mmr1_fast::rl::grpo::{Aggregation, KlConfig, KlEstimator, LossConfig, PolicyLoss};
    let same = |a: &[Vec<f32>], b: &[Vec<f32>], tag: &str| {
        same_bits(a, b, tag, "0: loss, clip fraction, KL; 1: entropy")
    };
    let vanilla = LossConfig {
        entropy_coef: 0.02,
        kl: Some(KlConfig { estimator: KlEstimator::K3, coef: 0.05 }),
        ..LossConfig::mmr1()
    };
    let cispo = LossConfig {
        policy: PolicyLoss::Cispo,
        agg: Aggregation::SeqMeanTokenSum,
        ..LossConfig::verl()
    };
    let sapo = LossConfig { policy: PolicyLoss::Sapo, ..LossConfig::mmr1() };
    let gspo = LossConfig { policy: PolicyLoss::Gspo, ..LossConfig::verl() };
    let seq_mean = LossConfig { agg: Aggregation::SeqMeanTokenMean, ..vanilla };
    let cases = [(vanilla, true), (cispo, true), (sapo, true), (gspo, false), (seq_mean, false)];
    let (v, chunk) = (64, 5);
    let seqs = [random_ids(9, v, 1), random_ids(14, v, 2), random_ids(6, v, 3)];
    let cpu = model_on(&Cpu, v, 9);
    for (k, (cfg, rowwise)) in cases.iter().enumerate() {
        let (one, _) = grpo_step(&Cpu, &cpu, &seqs, cfg, chunk, true);
        let (two, _) = grpo_step(&Cpu, &cpu, &seqs, cfg, chunk, false);
        same(&one, &two, &format!("case {k}, cpu: one pass vs two"));
        assert!(one[0].iter().all(|x| x.is_finite()) && one[0][0] != 0.0, "{:?}", one[0]);
        for p in [Precision::F32, Precision::Bf16] {
            let dev = EmuDevice::with_schedules(&[Schedule::Forward]).with_profile();
            let emu = CudaBackend::with_device(dev).with_precision(p).unwrap();
            let em = model_on(&emu, v, 9);
            let (one, ran1) = grpo_step(&emu, &em, &seqs, cfg, chunk, true);
            let (two, ran2) = grpo_step(&emu, &em, &seqs, cfg, chunk, false);
            let tag = format!("case {k}, emulator {p}");
            same(&one, &two, &format!("{tag}: one pass vs two"));
            let responses: usize = seqs.iter().map(|s| s.len() - 3).sum();
            let chunks = responses.div_ceil(chunk) as u64;
            let saved = calls(&ran2, "gemm_") - calls(&ran1, "gemm_");
            assert_eq!(saved, if *rowwise { chunks } else { 0 }, "{tag}: logits GEMMs saved");
        }
    }
}
