//! One GRPO update (`rl::trainer::update`: old and reference log-prob passes, micro-steps with
//! the policy loss through `RlOps::rl_loss`, AdamW) on the CUDA emulator equals the same update
//! on the CPU reference: parameters after the update, the loss and every metric, for several
//! aggregation modes with the KL and entropy terms on. On the emulator the loss is the fused
//! kernel (kernels/grpo_loss.cu) reading the log-probs in device memory, the head is the
//! chunked log-prob path; on the CPU both are the `rl/` and model references.
#![cfg(feature = "emu")]

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::rl_ops::RlOps;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::{ParamLayout, Qwen2};
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::rl::advantage::AdvantageConfig;
use mmr1_fast::rl::grpo::{Aggregation, KlConfig, KlEstimator, LossConfig};
use mmr1_fast::rl::reward::{RewardConfig, Verdict};
use mmr1_fast::rl::rollout::{generate, SamplingParams};
use mmr1_fast::rl::trainer::{update, Experience, GrpoSettings, UpdateReport};
use mmr1_fast::train::Workspace;

const VOCAB: usize = 41;
const TEMP: f32 = 0.9;

fn settings(agg: Aggregation) -> GrpoSettings {
    GrpoSettings {
        group_size: 3,
        // Stop ids end responses at ragged lengths, so the aggregations differ.
        sampling: SamplingParams {
            temperature: TEMP,
            max_new_tokens: 9,
            stop_ids: vec![2, 5, 8, 13],
            ..Default::default()
        },
        loss: LossConfig {
            kl: Some(KlConfig { estimator: KlEstimator::K3, coef: 0.05 }),
            entropy_coef: 0.02,
            clip_eps_low: 0.2,
            clip_eps_high: 0.28,
            agg,
            ..LossConfig::mmr1()
        },
        adv: AdvantageConfig::verl(),
        reward: RewardConfig::default(),
        ppo_epochs: 1,
        // Two optimizer steps: the second mini-batch's ratios leave 1.
        mini_batches: 2,
        // Several micro-batches per mini-batch.
        micro_batch_tokens: 21,
        extras: Default::default(),
    }
}

fn experience(model: &Qwen2<Cpu>, s: &GrpoSettings) -> Experience {
    let prompts: Vec<Vec<u32>> =
        (0..4).map(|i| random_ids(3 + 2 * i, VOCAB, 1 + i as u64)).collect();
    let rolls =
        generate(model, &Cpu, &prompts, s.group_size, &s.sampling, 5, None, |_| {}).unwrap();
    let n = rolls.len();
    let lens: Vec<usize> = rolls.iter().map(|r| r.tokens.len()).collect();
    println!("response lengths {lens:?}");
    assert!(lens.iter().any(|&l| l != lens[0]), "responses of one length: aggregations coincide");
    Experience {
        items: (0..prompts.len()).collect(),
        prompts,
        responses: rolls.into_iter().map(|r| r.tokens).collect(),
        verdicts: vec![Verdict { extracted: None, accuracy: 0.0, format: 0.0 }; n],
        rewards: vec![0.0; n],
        advantages: (0..n).map(|i| [1.1, -0.7, 0.3, -1.4, 0.9][i % 5]).collect(),
        group_size: s.group_size,
        rollout: Default::default(),
    }
}

/// The update on `be` from the given host parameters; the parameters after it and the report.
fn run<B: RlOps>(
    be: &B,
    policy: &[Vec<f32>],
    reference: &[Vec<f32>],
    exp: &Experience,
    s: &GrpoSettings,
) -> (Vec<Vec<f32>>, UpdateReport) {
    let cfg = tiny_config(VOCAB, false);
    let layout = ParamLayout::new(&cfg);
    let mut pol = Qwen2::from_host(be, cfg.clone(), layout.clone(), policy);
    let refm = Qwen2::from_host(be, cfg, layout, reference);
    // AdamW's first step is sign(g) for |g| >> eps: a gradient element near 0 could take
    // either sign on two correct backends and move its parameter by 2 lr. A large eps makes
    // the step smooth in the gradient (lr g / (|g| + eps)), so parameters compare as
    // gradients do.
    let ac = AdamwConfig { eps: 1.0, max_grad_norm: None, ..AdamwConfig::default() };
    let mut opt = AdamW::new(be, &pol.params, ac);
    let mut ws = Workspace::new(&pol, be);
    // A few rows per head chunk, so the chunked path really chunks.
    ws.logit_chunk = 7;
    let rep = update(&mut pol, Some(&refm), &mut opt, be, exp, s, 0.1, &mut ws).unwrap();
    (pol.to_host(be), rep)
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    let err = (got - want).abs() / want.abs().max(1e-12);
    println!("{what}: emu {got:.9e} cpu {want:.9e} rel {err:.1e}");
    assert!(err <= tol && got.is_finite(), "{what}: emu {got} cpu {want} (rel {err:.2e} > {tol})");
}

#[test]
fn grpo_update_on_the_emulator_equals_the_cpu_update() {
    let start = random_model(tiny_config(VOCAB, false), 31).to_host(&Cpu);
    let reference = random_model(tiny_config(VOCAB, false), 32).to_host(&Cpu);
    let emu = CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]));
    for agg in [
        Aggregation::TokenMean,
        Aggregation::SeqMeanTokenMean,
        Aggregation::SeqMeanTokenSumNorm,
        Aggregation::TokenSum,
    ] {
        let s = settings(agg);
        let exp = experience(&random_model(tiny_config(VOCAB, false), 31), &s);
        let (p_cpu, r_cpu) = run(&Cpu, &start, &reference, &exp, &s);
        let (p_emu, r_emu) = run(&emu, &start, &reference, &exp, &s);
        println!("{agg:?}");
        // The f32 forward and backward of the two backends differ in summation order
        // (~1e-6 relative; the loss kernel agrees with the reference to f32 rounding), and
        // the second mini-batch sees the policy after the first optimizer step, which carries
        // that difference: ~1e-5 relative at worst (the policy-gradient part nearly cancels).
        close("loss", r_emu.loss, r_cpu.loss, 1e-4);
        let (m, c) = (&r_emu.metrics, &r_cpu.metrics);
        close("pg_loss", m.pg_loss, c.pg_loss, 1e-4);
        close("kl_loss", m.kl_loss, c.kl_loss, 1e-4);
        close("entropy_loss", m.entropy_loss, c.entropy_loss, 1e-4);
        close("kl", m.kl, c.kl, 1e-4);
        close("approx_kl", m.approx_kl, c.approx_kl, 1e-3);
        close("mean_ratio", m.mean_ratio, c.mean_ratio, 1e-4);
        close("entropy", m.entropy.unwrap(), c.entropy.unwrap(), 1e-5);
        assert_eq!(m.active_tokens, c.active_tokens);
        for (k, (a, b)) in [
            (m.clip_frac_low, c.clip_frac_low),
            (m.clip_frac_high, c.clip_frac_high),
            (m.dual_clip_frac, c.dual_clip_frac),
        ]
        .iter()
        .enumerate()
        {
            // A token at the clip boundary may fall either side: one token at most.
            assert!((a - b).abs() <= 1.0 / c.active_tokens + 1e-12, "clip fraction {k}: {a} {b}");
        }
        assert!(c.kl > 1e-3 && c.entropy.unwrap() > 0.1, "KL and entropy terms must matter");
        assert!(c.clip_frac > 0.0 && c.mean_ratio != 1.0, "the second mini-batch must clip");
        // logp_old and the first mini-batch's log-probs come from the same forward.
        assert_eq!(r_emu.first_epoch_max_ratio_dev, 0.0);
        assert_eq!(r_cpu.first_epoch_max_ratio_dev, 0.0);
        // Parameters: compare what the update changed.
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for ((e, c), s0) in p_emu.iter().zip(&p_cpu).zip(&start) {
            for ((x, y), z) in e.iter().zip(c).zip(s0) {
                assert!(x.is_finite());
                num += ((x - y) as f64).powi(2);
                den += ((y - z) as f64).powi(2);
            }
        }
        let rel = (num / den).sqrt();
        println!(
            "parameter change: |emu - cpu| / |cpu - start| = {rel:.2e}, |change| {:.3e}",
            den.sqrt()
        );
        assert!(den > 0.0 && rel < 1e-4, "{agg:?}: parameters differ by {rel:.2e} of the update");
    }
}

/// At `--precision bf16` (GEMM operands rounded to bf16 through the weights' bf16 shadows; this
/// model's head dim 8 has no flash kernel, as the demo's 24 has none) the first mini-batch's
/// ratio is still exactly 1: `logp_old` and the update read the same shadows through the same
/// GEMMs on the same micro-batches, and the reference model's pass between them leaves the
/// policy's shadows alone. The update itself stays within bf16 rounding of the f32 CPU update.
#[test]
fn grpo_update_in_bf16_keeps_the_first_ratio_exactly_one() {
    use mmr1_fast::backend::precision::Precision;
    let start = random_model(tiny_config(VOCAB, false), 31).to_host(&Cpu);
    let reference = random_model(tiny_config(VOCAB, false), 32).to_host(&Cpu);
    let emu = CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]))
        .with_precision(Precision::Bf16)
        .unwrap();
    let s = settings(Aggregation::TokenMean);
    let exp = experience(&random_model(tiny_config(VOCAB, false), 31), &s);
    let (p_cpu, _) = run(&Cpu, &start, &reference, &exp, &s);
    let (p_bf, r_bf) = run(&emu, &start, &reference, &exp, &s);
    assert_eq!(r_bf.first_epoch_max_ratio_dev, 0.0, "bf16: logp_old and the update disagree");
    assert!(r_bf.metrics.mean_ratio != 1.0, "the second mini-batch must see a moved policy");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for ((e, c), s0) in p_bf.iter().zip(&p_cpu).zip(&start) {
        for ((x, y), z) in e.iter().zip(c).zip(s0) {
            assert!(x.is_finite());
            num += ((x - y) as f64).powi(2);
            den += ((y - z) as f64).powi(2);
        }
    }
    let rel = (num / den).sqrt();
    println!("bf16 update vs f32 CPU update: |bf16 - cpu| / |cpu - start| = {rel:.2e}");
    assert!(den > 0.0 && rel < 5e-2, "bf16 update differs by {rel:.2e} of the update");
}

/// The head's logits GEMMs of an update (emulator profile: `[rows x vocab]` products, the old
/// and reference log-prob passes', each micro-step's forward and backward) cover the response
/// rows only, and no prompt row: the log-prob passes and the micro-steps take the loss's rows
/// (`forward_logprobs_of_rows`, `TokenLoss::rows`), so a pass and the step it feeds give their
/// GEMMs the same operands. Three times with a token-level loss (old, reference, the backward:
/// the head's backward gives the log-probs, `TokenLoss::rowwise`), four with seq-mean-token-mean
/// (the micro-step's forward pass too).
#[test]
fn an_update_computes_logits_for_response_rows_only() {
    for (agg, passes) in [(Aggregation::TokenMean, 3), (Aggregation::SeqMeanTokenMean, 4)] {
        logit_rows_of_an_update(agg, passes);
    }
}

fn logit_rows_of_an_update(agg: Aggregation, passes: u64) {
    let start = random_model(tiny_config(VOCAB, false), 31).to_host(&Cpu);
    let reference = random_model(tiny_config(VOCAB, false), 32).to_host(&Cpu);
    let dev = EmuDevice::with_schedules(&[Schedule::Forward]).with_profile();
    let emu = CudaBackend::with_device(dev);
    let s = settings(agg);
    let exp = experience(&random_model(tiny_config(VOCAB, false), 31), &s);
    let before = emu.kernel_profile();
    run(&emu, &start, &reference, &exp, &s);
    let ran = mmr1_fast::backend::profile::since(&before, &emu.kernel_profile());
    let hidden = tiny_config(VOCAB, false).hidden_size;
    // "gemm_f32 {m}x{n}x{k} NT": the head's logits are m rows x n = vocab, k = hidden.
    let logit_rows: u64 = ran
        .iter()
        .filter_map(|k| {
            let shape = k.name.strip_prefix("gemm_f32 ")?.strip_suffix(" NT")?;
            let dims: Vec<usize> = shape.split('x').map(|x| x.parse().unwrap()).collect();
            (dims[1..] == [VOCAB, hidden]).then(|| dims[0] as u64 * k.calls)
        })
        .sum();
    let responses = exp.response_tokens() as u64;
    let prompts: u64 =
        (0..exp.responses.len()).map(|r| exp.prompts[r / exp.group_size].len() as u64).sum();
    println!("logit rows {logit_rows}: {responses} response tokens, {prompts} prompt tokens");
    assert_eq!(logit_rows, passes * responses, "{agg:?}: {passes} passes over the responses only");
}
