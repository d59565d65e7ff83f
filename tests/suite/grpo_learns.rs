//! GRPO end to end on a tiny random model: the first PPO epoch's ratio is exactly 1 (the
//! log-prob path is batch-invariant), and a short run moves the policy toward a toy reward.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::rl::advantage::{group_advantages, AdvantageConfig};
use mmr1_fast::rl::grpo::{CovParams, LossConfig, PolicyLoss};
use mmr1_fast::rl::reward::{RewardConfig, Verdict};
use mmr1_fast::rl::rollout::{generate, SamplingParams};
use mmr1_fast::rl::trainer::{update, Experience, GrpoSettings};
use mmr1_fast::train::Workspace;

const VOCAB: usize = 40;

fn settings(micro_batch_tokens: usize) -> GrpoSettings {
    GrpoSettings {
        group_size: 8,
        sampling: SamplingParams { temperature: 1.0, max_new_tokens: 6, ..Default::default() },
        loss: LossConfig { kl: None, ..LossConfig::mmr1() },
        adv: AdvantageConfig::verl(),
        reward: RewardConfig::default(),
        ppo_epochs: 1,
        mini_batches: 1,
        micro_batch_tokens,
        extras: Default::default(),
    }
}

/// Toy reward: the fraction of response tokens below 10 (a quarter of the vocabulary).
fn toy_experience(
    model: &mmr1_fast::model::Qwen2<Cpu>,
    s: &GrpoSettings,
    prompts: &[Vec<u32>],
    seed: u64,
) -> Experience {
    let rolls =
        generate(model, &Cpu, prompts, s.group_size, &s.sampling, seed, None, |_| {}).unwrap();
    let rewards: Vec<f32> = rolls
        .iter()
        .map(|r| r.tokens.iter().filter(|&&t| t < 10).count() as f32 / r.tokens.len() as f32)
        .collect();
    let (advantages, _) = group_advantages(&rewards, s.group_size, &s.adv);
    Experience {
        items: (0..prompts.len()).collect(),
        prompts: prompts.to_vec(),
        responses: rolls.into_iter().map(|r| r.tokens).collect(),
        verdicts: rewards
            .iter()
            .map(|&r| Verdict { extracted: None, accuracy: r, format: 0.0 })
            .collect(),
        rewards,
        advantages,
        group_size: s.group_size,
        rollout: Default::default(),
    }
}

#[test]
fn first_epoch_ratio_is_exactly_one_whatever_the_micro_batching() {
    let prompts = vec![random_ids(5, VOCAB, 1), random_ids(9, VOCAB, 2), random_ids(3, VOCAB, 3)];
    for budget in [1, 17, 10_000] {
        let mut model = random_model(tiny_config(VOCAB, true), 7);
        let mut s = settings(budget);
        // The old log-probs by their own pass (on-policy the update would take its own).
        s.extras.old_logprob_pass = true;
        let exp = toy_experience(&model, &s, &prompts, 11);
        let mut opt = AdamW::new(&Cpu, &model.params, AdamwConfig::default());
        let mut st = Workspace::new(&model, &Cpu);
        let rep = update(&mut model, None, &mut opt, &Cpu, &exp, &s, 1e-3, &mut st).unwrap();
        assert_eq!(rep.first_epoch_max_ratio_dev, 0.0, "budget {budget}: ratio must be exactly 1");
        assert_eq!(rep.metrics.clip_frac, 0.0);
        assert!(rep.steps[0].grad_norm > 0.0 && !rep.steps[0].skipped);
    }
}

/// On-policy (one PPO epoch of one mini-batch) the update takes the old log-probs from its own
/// forward and skips their pass: the same loss, metrics and parameters, bit for bit, as with
/// the pass (which the first-epoch ratio check above proves equal to the forward's), on the
/// CPU and on the emulator (f32, and bf16 GEMMs), with and without a reference model's KL
/// term and an entropy bonus, whatever the micro-batching.
#[test]
fn on_policy_updates_skip_the_old_pass_and_keep_their_bits() {
    use mmr1_fast::rl::grpo::{KlConfig, KlEstimator};
    fn check<B: mmr1_fast::backend::rl_ops::RlOps>(be: &B, what: &str) {
        let prompts = vec![random_ids(5, VOCAB, 1), random_ids(9, VOCAB, 2)];
        let host = random_model(tiny_config(VOCAB, true), 7).to_host(&Cpu);
        let reference = random_model(tiny_config(VOCAB, true), 8);
        let on = |m: &mmr1_fast::model::Qwen2<Cpu>| {
            mmr1_fast::model::Qwen2::from_host(
                be,
                m.cfg.clone(),
                m.layout.clone(),
                &m.to_host(&Cpu),
            )
        };
        let reference = on(&reference);
        for (budget, kl) in [(17, false), (10_000, true)] {
            let mut s = settings(budget);
            if kl {
                s.loss.kl = Some(KlConfig { estimator: KlEstimator::K3, coef: 0.05 });
                s.loss.entropy_coef = 0.01;
            }
            let cpu_model = random_model(tiny_config(VOCAB, true), 7);
            let exp = toy_experience(&cpu_model, &s, &prompts, 11);
            let run = |pass: bool| {
                let mut s = s.clone();
                s.extras.old_logprob_pass = pass;
                let mut model = mmr1_fast::model::Qwen2::from_host(
                    be,
                    cpu_model.cfg.clone(),
                    cpu_model.layout.clone(),
                    &host,
                );
                let mut opt = AdamW::new(be, &model.params, AdamwConfig::default());
                let mut st = Workspace::new(&model, be);
                let r = kl.then_some(&reference);
                let rep = update(&mut model, r, &mut opt, be, &exp, &s, 1e-3, &mut st).unwrap();
                let w: Vec<u32> = model.to_host(be).concat().iter().map(|x| x.to_bits()).collect();
                (rep, w)
            };
            let ((skip, w_skip), (pass, w_pass)) = (run(false), run(true));
            let tag = format!("{what}, budget {budget}, kl {kl}");
            assert_eq!(skip.loss.to_bits(), pass.loss.to_bits(), "{tag}: loss");
            assert_eq!(format!("{:?}", skip.metrics), format!("{:?}", pass.metrics), "{tag}");
            assert_eq!(w_skip, w_pass, "{tag}: parameters after the update");
            assert!(w_skip != host.concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
    }
    check(&Cpu, "cpu");
    #[cfg(feature = "emu")]
    {
        use mmr1_fast::backend::cuda::CudaBackend;
        use mmr1_fast::backend::precision::Precision;
        check(&CudaBackend::emulator(), "emu f32");
        check(&CudaBackend::emulator().with_precision(Precision::Bf16).unwrap(), "emu bf16");
    }
}

/// End to end through `update`, for the default loss and for the modes that need batch-level
/// selections (Clip-Cov, KL-Cov, the entropy mask) or sequence-level ratios (GSPO, GMPO).
#[test]
fn the_loss_gradient_does_not_depend_on_micro_batching() {
    let prompts = vec![random_ids(5, VOCAB, 1), random_ids(9, VOCAB, 2)];
    let cov = CovParams {
        clip_cov_ratio: 0.3,
        clip_cov_lb: -5.0,
        kl_cov_ratio: 0.3,
        ..Default::default()
    };
    let modes: Vec<(LossConfig, Option<f32>)> = vec![
        (LossConfig { kl: None, ..LossConfig::mmr1() }, None),
        (LossConfig { kl: None, policy: PolicyLoss::ClipCov, cov, ..LossConfig::verl() }, None),
        (LossConfig { kl: None, policy: PolicyLoss::KlCov, cov, ..LossConfig::verl() }, None),
        (LossConfig { kl: None, policy: PolicyLoss::Gspo, ..LossConfig::verl() }, Some(0.5)),
        (LossConfig { kl: None, policy: PolicyLoss::GeoMean, ..LossConfig::verl() }, None),
    ];
    for (loss, quantile) in modes {
        let mut grads = Vec::new();
        for budget in [13, 10_000] {
            let mut model = random_model(tiny_config(VOCAB, true), 7);
            let mut s = settings(budget);
            s.loss = loss;
            s.extras.top_entropy_quantile = quantile;
            let exp = toy_experience(&model, &s, &prompts, 5);
            let mut opt = AdamW::new(&Cpu, &model.params, AdamwConfig::default());
            let mut st = Workspace::new(&model, &Cpu);
            update(&mut model, None, &mut opt, &Cpu, &exp, &s, 1e-3, &mut st).unwrap();
            grads.push(st.grads.concat());
        }
        let e = rel_l2(&grads[0], &grads[1]);
        assert!(e < 1e-5, "{:?}: gradients differ across micro-batch splits: {e:.2e}", loss.policy);
        assert!(grads[0].iter().any(|&g| g != 0.0), "{:?}: no gradient", loss.policy);
    }
}

#[test]
fn grpo_moves_the_policy_toward_higher_reward() {
    let mut model = random_model(tiny_config(VOCAB, true), 3);
    let s = settings(4096);
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| random_ids(4, VOCAB, 100 + i)).collect();
    let mut opt = AdamW::new(&Cpu, &model.params, AdamwConfig::default());
    let mut st = Workspace::new(&model, &Cpu);
    let mut curve = Vec::new();
    for step in 0..25 {
        let exp = toy_experience(&model, &s, &prompts, 1000 + step);
        curve.push(exp.rewards.iter().sum::<f32>() / exp.rewards.len() as f32);
        update(&mut model, None, &mut opt, &Cpu, &exp, &s, 3e-3, &mut st).unwrap();
    }
    let first: f32 = curve[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = curve[20..].iter().sum::<f32>() / 5.0;
    assert!(last > first + 0.2, "mean reward went from {first:.3} to {last:.3}: {curve:?}");
}
