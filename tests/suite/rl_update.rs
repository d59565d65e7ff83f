//! `rl::trainer::update` on the paths that make it MMR1, against references written here:
//! - the KL term: reference log-probs come from the frozen reference model, KL is 0 at the
//!   first step when the reference is the starting policy and > 0 once the policy moved, and
//!   its gradient through the whole trainer matches finite differences of a loss computed here;
//! - several PPO epochs over several mini-batches: the ratio leaves 1, the clipped branch runs,
//!   clip fractions are reported, and the result equals a slow reference loop written here
//!   (one sequence at a time, log-softmax in f64, the clipped surrogate from its definition).

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::model::{Packed, Qwen2};
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::rl::advantage::AdvantageConfig;
use mmr1_fast::rl::grpo::{KlConfig, KlEstimator, LossConfig};
use mmr1_fast::rl::reward::{RewardConfig, Verdict};
use mmr1_fast::rl::rollout::{generate, SamplingParams};
use mmr1_fast::rl::trainer::{update, Experience, GrpoSettings};
use mmr1_fast::train::Workspace;

const VOCAB: usize = 37;
const TEMP: f32 = 0.8;

fn settings(kl: Option<KlConfig>, epochs: usize, minis: usize, micro: usize) -> GrpoSettings {
    GrpoSettings {
        group_size: 3,
        sampling: SamplingParams { temperature: TEMP, max_new_tokens: 5, ..Default::default() },
        loss: LossConfig { kl, clip_eps_low: 0.2, clip_eps_high: 0.28, ..LossConfig::mmr1() },
        adv: AdvantageConfig::verl(),
        reward: RewardConfig::default(),
        ppo_epochs: epochs,
        mini_batches: minis,
        micro_batch_tokens: micro,
        extras: Default::default(),
    }
}

/// Seed of the rollouts in [`experience`] (any seed: the comparison with the slow reference
/// loop runs over several, see `ppo_epochs_and_mini_batches_match_a_slow_reference_loop`).
const ROLLOUT_SEED: u64 = 1;

/// Rollouts of `prompts` with fixed, non-zero, asymmetric advantages (so both clip sides run).
fn experience(model: &Qwen2<Cpu>, s: &GrpoSettings, prompts: &[Vec<u32>]) -> Experience {
    experience_seeded(model, s, prompts, ROLLOUT_SEED)
}

fn experience_seeded(
    model: &Qwen2<Cpu>,
    s: &GrpoSettings,
    prompts: &[Vec<u32>],
    seed: u64,
) -> Experience {
    let rolls =
        generate(model, &Cpu, prompts, s.group_size, &s.sampling, seed, None, |_| {}).unwrap();
    let n = rolls.len();
    let advantages: Vec<f32> = (0..n).map(|i| [1.3, -0.9, 0.4, -1.6, 0.7][i % 5]).collect();
    Experience {
        items: (0..prompts.len()).collect(),
        prompts: prompts.to_vec(),
        responses: rolls.into_iter().map(|r| r.tokens).collect(),
        verdicts: vec![Verdict { extracted: None, accuracy: 0.0, format: 0.0 }; n],
        rewards: vec![0.0; n],
        advantages,
        group_size: s.group_size,
        rollout: Default::default(),
    }
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        random_ids(4, VOCAB, 1),
        random_ids(7, VOCAB, 2),
        random_ids(3, VOCAB, 3),
        random_ids(5, VOCAB, 4),
    ]
}

fn copy(m: &Qwen2<Cpu>) -> Qwen2<Cpu> {
    Qwen2::from_host(&Cpu, m.cfg.clone(), m.layout.clone(), &m.to_host(&Cpu))
}

/// Log-probs at temperature TEMP of each response's tokens, one sequence at a time, from the
/// logits with an f64 log-softmax (not the fused log-prob path the trainer uses).
fn slow_logprobs(m: &Qwen2<Cpu>, exp: &Experience) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for (r, resp) in exp.responses.iter().enumerate() {
        let prompt = &exp.prompts[r / exp.group_size];
        let seq: Vec<u32> = prompt.iter().chain(resp).cloned().collect();
        let batch = Packed::new(std::slice::from_ref(&seq));
        let mut acts = None;
        m.forward(&Cpu, &batch, &mut acts).unwrap();
        let rows: Vec<usize> = (prompt.len() - 1..seq.len() - 1).collect();
        let logits = m.logits_of_rows(&Cpu, &acts.as_ref().unwrap().xn_f, &rows);
        let lp = rows
            .iter()
            .enumerate()
            .map(|(j, &row)| {
                let l: Vec<f64> = logits[j * VOCAB..(j + 1) * VOCAB]
                    .iter()
                    .map(|&x| x as f64 / TEMP as f64)
                    .collect();
                let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = mx + l.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
                l[seq[row + 1] as usize] - lse
            })
            .collect();
        out.push(lp);
    }
    out
}

/// k3 (MMR1's low_var_kl) of one token, from its definition (shared/MMR1.md, verl
/// `kl_penalty`): x = clamp(ref - logp, -20, 20), e^x - x - 1 clamped to [-10, 10].
fn k3(logp: f64, ref_lp: f64) -> f64 {
    let x = (ref_lp - logp).clamp(-20.0, 20.0);
    (x.exp() - x - 1.0).clamp(-10.0, 10.0)
}

/// Token-mean k3 KL between the policy and reference log-probs.
fn mean_kl(pol: &[Vec<f64>], reference: &[Vec<f64>]) -> f64 {
    let (mut s, mut n) = (0.0, 0.0);
    for (p, r) in pol.iter().zip(reference) {
        for (a, b) in p.iter().zip(r) {
            s += k3(*a, *b);
            n += 1.0;
        }
    }
    s / n
}

fn kl_cfg(coef: f32) -> Option<KlConfig> {
    Some(KlConfig { estimator: KlEstimator::K3, coef: coef as f64 })
}

#[test]
fn reference_logprobs_come_from_the_frozen_reference_model() {
    let mut policy = random_model(tiny_config(VOCAB, true), 7);
    let reference = random_model(tiny_config(VOCAB, true), 8);
    let s = settings(kl_cfg(0.01), 1, 1, 19);
    let exp = experience(&policy, &s, &prompts());
    let want = mean_kl(&slow_logprobs(&policy, &exp), &slow_logprobs(&reference, &exp));
    assert!(want > 0.05, "the two models must differ for this test to mean anything ({want})");
    let mut opt = AdamW::new(&Cpu, &policy.params, AdamwConfig::default());
    let mut st = Workspace::new(&policy, &Cpu);
    let rep =
        update(&mut policy, Some(&reference), &mut opt, &Cpu, &exp, &s, 0.0, &mut st).unwrap();
    let got = rep.metrics.kl;
    assert!((got - want).abs() < 1e-4 * want.max(1.0), "reported KL {got}, reference says {want}");
    assert!((rep.metrics.kl_loss - 0.01 * want).abs() < 1e-6, "kl_loss {}", rep.metrics.kl_loss);
}

#[test]
fn kl_is_zero_at_the_start_and_grows_once_the_policy_moves() {
    let mut policy = random_model(tiny_config(VOCAB, true), 11);
    let reference = copy(&policy);
    let s = settings(kl_cfg(0.01), 1, 1, 10_000);
    let exp = experience(&policy, &s, &prompts());
    let mut opt = AdamW::new(&Cpu, &policy.params, AdamwConfig::default());
    let mut st = Workspace::new(&policy, &Cpu);
    let first =
        update(&mut policy, Some(&reference), &mut opt, &Cpu, &exp, &s, 1e-4, &mut st).unwrap();
    assert_eq!(first.metrics.kl, 0.0, "KL to an identical reference must be exactly 0");
    for _ in 0..2 {
        update(&mut policy, Some(&reference), &mut opt, &Cpu, &exp, &s, 1e-4, &mut st).unwrap();
    }
    // The policy moved: the next update sees the KL of the moved policy, as computed here.
    let want = mean_kl(&slow_logprobs(&policy, &exp), &slow_logprobs(&reference, &exp));
    let got = update(&mut policy, Some(&reference), &mut opt, &Cpu, &exp, &s, 1e-4, &mut st)
        .unwrap()
        .metrics
        .kl;
    assert!(want > 1e-4, "the policy did not move away from the reference ({want})");
    assert!((got - want).abs() < 1e-3 * want, "reported KL {got}, reference says {want}");
}

/// The trainer's gradient with only the KL term (zero advantages, coefficient 1) against
/// central finite differences of the token-mean k3 computed here.
#[test]
fn kl_gradient_through_the_trainer_matches_finite_differences() {
    let policy0 = random_model(tiny_config(VOCAB, true), 13);
    let host0 = policy0.to_host(&Cpu);
    // A reference close to the policy (realistic, and k3's clamp stays out of the way).
    let mut href = host0.clone();
    for (i, t) in href.iter_mut().enumerate() {
        for (j, x) in t.iter_mut().enumerate() {
            *x += 0.05 * (((i * 131 + j * 17) % 23) as f32 / 11.0 - 1.0);
        }
    }
    let reference = Qwen2::from_host(&Cpu, policy0.cfg.clone(), policy0.layout.clone(), &href);
    let s = settings(kl_cfg(1.0), 1, 1, 17);
    let mut exp = experience(&policy0, &s, &prompts());
    exp.advantages.iter_mut().for_each(|a| *a = 0.0);
    let mut policy = copy(&policy0);
    let mut opt = AdamW::new(&Cpu, &policy.params, AdamwConfig::default());
    let mut st = Workspace::new(&policy, &Cpu);
    update(&mut policy, Some(&reference), &mut opt, &Cpu, &exp, &s, 0.0, &mut st).unwrap();
    let ref_lp = slow_logprobs(&reference, &exp);
    let loss_at = |host: &[Vec<f32>]| {
        let m = Qwen2::from_host(&Cpu, policy0.cfg.clone(), policy0.layout.clone(), host);
        mean_kl(&slow_logprobs(&m, &exp), &ref_lp)
    };
    // The largest gradient entries of three tensors (embedding/head, a layer, the last norm).
    let n = host0.len();
    let mut checked = 0;
    for p in [0, n / 2, n - 1] {
        let g = &st.grads[p];
        let j = (0..g.len()).max_by(|&a, &b| g[a].abs().partial_cmp(&g[b].abs()).unwrap()).unwrap();
        let h = 1e-2f32;
        let (mut hp, mut hm) = (host0.clone(), host0.clone());
        hp[p][j] += h;
        hm[p][j] -= h;
        let fd = (loss_at(&hp) - loss_at(&hm)) / (2.0 * h as f64);
        let an = g[j] as f64;
        assert!(
            (an - fd).abs() <= 2e-2 * fd.abs().max(1e-3),
            "tensor {p} entry {j}: trainer gradient {an:.6e}, finite difference {fd:.6e}"
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
}

/// The clipped surrogate, one sequence at a time, from its definition (token-mean over each
/// mini-batch, min of the unclipped and clipped objective), with AdamW from the crate.
fn slow_update(
    policy: &mut Qwen2<Cpu>,
    opt: &mut AdamW<Cpu>,
    exp: &Experience,
    s: &GrpoSettings,
    lr: f32,
) -> (Vec<f64>, usize, usize) {
    let old = slow_logprobs(policy, exp);
    let g = exp.group_size;
    let groups = exp.prompts.len();
    let per = groups.div_ceil(s.mini_batches);
    let (el, eh) = (s.loss.clip_eps_low, s.loss.clip_eps_high);
    let (mut clip_low, mut clip_high, mut tokens) = (0usize, 0usize, 0usize);
    let mut losses = Vec::new();
    for _epoch in 0..s.ppo_epochs {
        for g0 in (0..groups).step_by(per) {
            let rs: Vec<usize> = (g0 * g..(g0 + per).min(groups) * g).collect();
            let n_tok: usize = rs.iter().map(|&r| exp.responses[r].len()).sum();
            let mut grads = policy.zero_grads(&Cpu);
            let now = slow_logprobs(policy, exp);
            let mut loss = 0.0;
            for &r in &rs {
                let a = exp.advantages[r] as f64;
                let prompt = &exp.prompts[r / g];
                let seq: Vec<u32> = prompt.iter().chain(&exp.responses[r]).cloned().collect();
                let batch = Packed::new(std::slice::from_ref(&seq));
                let (targets, _) = batch.next_token_targets();
                let mut dlp = vec![0f32; seq.len()];
                for (k, (&lp, &lo)) in now[r].iter().zip(&old[r]).enumerate() {
                    let ratio = (lp - lo).exp();
                    let unclipped = -a * ratio;
                    let clipped = -a * ratio.clamp(1.0 - el, 1.0 + eh);
                    loss += unclipped.max(clipped) / n_tok as f64;
                    if unclipped >= clipped {
                        dlp[prompt.len() - 1 + k] = (-a * ratio / n_tok as f64) as f32;
                    } else if a < 0.0 {
                        clip_low += 1;
                    } else {
                        clip_high += 1;
                    }
                    tokens += 1;
                }
                let mut acts = None;
                policy.forward(&Cpu, &batch, &mut acts).unwrap();
                let acts = acts.unwrap();
                let mut scratch = None;
                policy.backward_with(
                    &Cpu,
                    &batch,
                    &acts,
                    &targets,
                    &dlp,
                    None,
                    1.0 / TEMP,
                    &mut grads,
                    &mut scratch,
                );
            }
            losses.push(loss);
            opt.step(&Cpu, &mut policy.params, &grads, lr);
        }
    }
    let _ = tokens;
    (losses, clip_low, clip_high)
}

/// The trainer (3 epochs x 2 mini-batches, 6 AdamW steps) against the slow reference loop, for
/// the rollouts of several seeds (none picked to pass).
///
/// The bound on the final weights is measured, not chosen: the two loops differ only in f32
/// summation order (packed micro-batches vs one sequence at a time, and an f64 log-softmax), and
/// Adam turns such rounding into weight differences far above it (its first step is
/// lr * sign(g), so a gradient component near 0 whose sign the rounding flips moves by 2 lr).
/// How much it does depends on the rollouts (relative L2 from 5e-7 to 3.6e-5 over seeds 1-8 and
/// 21). The trainer run again with two other micro-batch splits (one micro-batch per
/// mini-batch; 7 tokens) changes nothing but that summation order, so its distance to the
/// first run measures this magnification for these rollouts; the reference loop must be within
/// 4x of it (seen: 0.2x to 1.6x), plus 1e-6 for f32 round-off in weights of order 1. A planted
/// normalisation bug misses this by orders of magnitude (docs/testing.md).
#[test]
fn ppo_epochs_and_mini_batches_match_a_slow_reference_loop() {
    for seed in [1, 2, 3, 4, 5, 6, 7, 8, 21] {
        ppo_epochs_and_mini_batches_case(seed);
    }
}

fn ppo_epochs_and_mini_batches_case(seed: u64) {
    let start = random_model(tiny_config(VOCAB, true), 17);
    let s = settings(None, 3, 2, 23);
    let exp = experience_seeded(&start, &s, &prompts(), seed);
    let lr = 2e-2;
    let cfg = AdamwConfig::default();

    let run = |micro: usize| {
        let s = GrpoSettings { micro_batch_tokens: micro, ..s.clone() };
        let mut fast = copy(&start);
        let mut opt = AdamW::new(&Cpu, &fast.params, cfg);
        let mut st = Workspace::new(&fast, &Cpu);
        let rep = update(&mut fast, None, &mut opt, &Cpu, &exp, &s, lr, &mut st).unwrap();
        (rep, fast.to_host(&Cpu).concat())
    };
    let (rep, fast) = run(s.micro_batch_tokens);
    let summation_noise =
        [run(usize::MAX), run(7)].iter().map(|(_, w)| rel_l2(&fast, w)).fold(0.0, f64::max);

    let mut slow = copy(&start);
    let mut opt2 = AdamW::new(&Cpu, &slow.params, cfg);
    let (losses, clip_low, clip_high) = slow_update(&mut slow, &mut opt2, &exp, &s, lr);

    assert_eq!(rep.steps.len(), 3 * 2, "one optimizer step per epoch and mini-batch");
    assert_eq!(rep.first_epoch_max_ratio_dev, 0.0);
    // The ratio left 1 and both clip sides ran inside the trainer, and the fractions agree
    // with the reference loop's own count (token-weighted over every epoch and mini-batch).
    let tokens = exp.responses.iter().map(|r| r.len()).sum::<usize>() * s.ppo_epochs;
    assert!(clip_low > 0 && clip_high > 0, "seed {seed}: the test must exercise both clip sides");
    let (fl, fh) = (clip_low as f64 / tokens as f64, clip_high as f64 / tokens as f64);
    assert!(
        (rep.metrics.clip_frac_low - fl).abs() < 1e-9,
        "seed {seed}: clip_frac_low {} vs {fl}",
        rep.metrics.clip_frac_low
    );
    assert!(
        (rep.metrics.clip_frac_high - fh).abs() < 1e-9,
        "seed {seed}: clip_frac_high {} vs {fh}",
        rep.metrics.clip_frac_high
    );
    assert!((rep.metrics.clip_frac - fl - fh).abs() < 1e-9);
    assert!((rep.metrics.mean_ratio - 1.0).abs() > 1e-3, "seed {seed}: mean ratio stayed 1");
    let mean_loss = losses.iter().sum::<f64>() / losses.len() as f64;
    assert!(
        (rep.loss - mean_loss).abs() < 1e-5 * mean_loss.abs().max(1.0),
        "seed {seed}: loss {} vs {mean_loss}",
        rep.loss
    );
    let slow = slow.to_host(&Cpu).concat();
    let e = rel_l2(&fast, &slow);
    let moved = rel_l2(&start.to_host(&Cpu).concat(), &slow);
    assert!(moved > 1e-3, "seed {seed}: the policy did not move ({moved:.2e})");
    let bound = 4.0 * summation_noise + 1e-6;
    assert!(
        e < bound,
        "seed {seed}: trainer and reference loop end at different weights: {e:.2e}, bound \
         {bound:.2e} (the trainer against itself with other splits: {summation_noise:.2e}; \
         moved {moved:.2e})"
    );
}

/// Dynamic filtering's bookkeeping (`Experience::retain_groups` / `extend`, used by the RL
/// phase): whole groups kept or appended, every per-response field moved together.
#[test]
fn experience_keeps_and_appends_whole_groups() {
    let group = |g: usize| {
        let v = |r: usize| Verdict { extracted: None, accuracy: (g * 2 + r) as f32, format: 1.0 };
        Experience {
            items: vec![10 + g],
            prompts: vec![vec![g as u32; g + 1]],
            responses: vec![vec![g as u32; g + 2], vec![g as u32 + 100; 1]],
            verdicts: vec![v(0), v(1)],
            rewards: vec![g as f32, g as f32 + 0.5],
            advantages: vec![-(g as f32), g as f32 + 0.25],
            group_size: 2,
            rollout: Default::default(),
        }
    };
    let mut exp = group(0);
    exp.extend(group(1));
    exp.extend(group(2));
    assert_eq!(exp.items, [10, 11, 12]);
    assert_eq!(exp.accuracy(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(exp.response_tokens(), (2 + 1) + (3 + 1) + (4 + 1));
    exp.retain_groups(&[true, false, true]);
    let (g0, g2) = (group(0), group(2));
    assert_eq!(exp.items, [10, 12]);
    assert_eq!(exp.prompts, [g0.prompts[0].clone(), g2.prompts[0].clone()]);
    assert_eq!(exp.responses, [&g0.responses[..], &g2.responses[..]].concat());
    assert_eq!(exp.accuracy(), [0.0, 1.0, 4.0, 5.0]);
    assert_eq!(exp.rewards, [0.0, 0.5, 2.0, 2.5]);
    assert_eq!(exp.advantages, [-0.0, 0.25, -2.0, 2.25]);
}

/// `collect`: the groups follow `indices` (not the item order), each response is graded
/// against its own item, DAPO's overlong penalty is added to the reward, and the advantages
/// are the groups' (here they differ only through the penalty, so a wrong grouping shows).
#[test]
fn collect_grades_shapes_and_groups_the_rollouts() {
    use mmr1_fast::data::demo::{demo_prompt, demo_tokenizer};
    use mmr1_fast::data::rl_items::RlItem;
    use mmr1_fast::rl::advantage::advantages_f64;
    use mmr1_fast::rl::graded::{grade_tokens, reward_item};
    use mmr1_fast::rl::overlong::OverlongPenalty;
    use mmr1_fast::rl::trainer::collect;

    let tok = demo_tokenizer().unwrap();
    let model = random_model(tiny_config(tok.vocab_size(), false), 17);
    let items: Vec<RlItem> = ["Add 1+2", "Add 4+5+6", "Add 7+8"]
        .iter()
        .map(|p| RlItem {
            id: None,
            problem: p.to_string(),
            answer: Some("3".into()),
            images: vec![],
            options: None,
            system: None,
        })
        .collect();
    let prompt_ids: Vec<Vec<u32>> =
        items.iter().map(|it| tok.encode(&demo_prompt(it)).unwrap()).collect();
    let mut s = settings(None, 1, 1, 64);
    // Many stop ids: responses of many lengths, so the penalty varies within a group.
    s.sampling.stop_ids = (1..40).collect();
    s.sampling.max_new_tokens = 6;
    let pen = OverlongPenalty { buffer_len: 4, penalty_factor: 1.0, max_response_len: 6 };
    s.extras.overlong = Some(pen);
    let indices = [2usize, 0];
    let (exp, stats) =
        collect(&model, &Cpu, &tok, &items, &prompt_ids, &indices, &s, 5, |_| {}).unwrap();

    let prompts: Vec<Vec<u32>> = indices.iter().map(|&i| prompt_ids[i].clone()).collect();
    let rolls =
        generate(&model, &Cpu, &prompts, s.group_size, &s.sampling, 5, Some(&tok), |_| {}).unwrap();
    let mut rewards = Vec::new();
    for r in &rolls {
        let reference = reward_item(&items[indices[r.prompt_index]]);
        let (_, _, reward) =
            grade_tokens(&tok, &r.tokens, &s.sampling.stop_ids, &s.reward, &reference).unwrap();
        rewards.push(reward as f64 + pen.penalty(r.tokens.len()));
    }
    let lens: Vec<usize> = rolls.iter().map(|r| r.tokens.len()).collect();
    let (adv, want_stats) = advantages_f64(&rewards, &[0, 3, 6], Some(&lens), &s.adv);
    assert_eq!(exp.items, indices);
    assert_eq!(exp.prompts, prompts);
    assert_eq!(exp.responses, rolls.iter().map(|r| r.tokens.clone()).collect::<Vec<_>>());
    assert_eq!(exp.rewards, rewards.iter().map(|&r| r as f32).collect::<Vec<_>>());
    assert_eq!(exp.advantages, adv.iter().map(|&a| a as f32).collect::<Vec<_>>());
    assert_eq!(stats.num_groups, want_stats.num_groups);
    assert_eq!(stats.reward_mean, want_stats.reward_mean);
    assert!(rewards.iter().any(|&r| r < 0.0), "no response was penalised: {rewards:?}");
    assert!(adv.iter().any(|&a| a.abs() > 0.1), "the advantages do not depend on the grouping");
}

/// The options that reach `update` only through a mask or an extra term change the update
/// when on and leave it bit-identical when off (top_entropy_quantile 0 and 1 are off), with 2
/// mini-batches so each mini-batch's slice of the masks must line up (a shifted slice panics).
#[test]
fn entropy_mask_entropy_bonus_and_clip_cov_reach_the_update() {
    use mmr1_fast::backend::Backend;
    use mmr1_fast::rl::grpo::{CovParams, PolicyLoss};
    let start = random_model(tiny_config(VOCAB, true), 23);
    let base = settings(None, 1, 2, 10_000);
    let exp = experience(&start, &base, &prompts());
    let run = |s: &GrpoSettings| -> Vec<f32> {
        let mut policy = copy(&start);
        let mut opt = AdamW::new(&Cpu, &policy.params, AdamwConfig::default());
        let mut st = Workspace::new(&policy, &Cpu);
        update(&mut policy, None, &mut opt, &Cpu, &exp, s, 1e-2, &mut st).unwrap();
        policy.params.iter().flat_map(|p| Cpu.download(p)).collect()
    };
    let plain = run(&base);
    let with = |f: &dyn Fn(&mut GrpoSettings)| {
        let mut s = base.clone();
        f(&mut s);
        run(&s)
    };
    for q in [0.0, 1.0] {
        let off = with(&|s| s.extras.top_entropy_quantile = Some(q));
        assert!(off == plain, "top_entropy_quantile {q} must be off");
    }
    let differs = |what: &str, w: Vec<f32>| {
        let e = rel_l2(&w, &plain);
        assert!(e > 1e-4, "{what} did not change the update (rel L2 {e:e})");
    };
    differs("top_entropy_quantile 0.5", with(&|s| s.extras.top_entropy_quantile = Some(0.5)));
    differs("entropy_coef 0.1", with(&|s| s.loss.entropy_coef = 0.1));
    let cov = CovParams {
        clip_cov_ratio: 0.3,
        clip_cov_lb: -1e9,
        clip_cov_ub: 1e9,
        ..Default::default()
    };
    differs(
        "Clip-Cov",
        with(&|s| {
            s.loss.policy = PolicyLoss::ClipCov;
            s.loss.cov = cov;
        }),
    );
}
