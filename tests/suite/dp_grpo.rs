//! Data-parallel GRPO update on in-process ranks (`dist::ThreadGroup`, CPU backend): with the
//! groups of each mini-batch sharded over 2 and 3 ranks, the update (reference KL, a
//! top-entropy token selection made over the whole mini-batch, 2 PPO epochs x 2 mini-batches)
//! ends at the weights of one process, every rank at the same bits; a group of one rank is
//! the plain `update` bit for bit.
//!
//! Tolerance: as in tests/suite/dp_sft.rs, the summed gradient differs from the single-process one
//! only in the order of its f32 additions: the first optimizer step's gradient norm agrees to
//! ~2e-9 relative (bound 1e-7). After that the ranks' weights differ from one process's by
//! those roundings, which this deliberately sensitive model (init std 0.2, a chaotic regime
//! the PPO clip and KL both act in) amplifies step by step: measured (stderr `MEASURED`)
//! gradient norms of later steps within 3e-6 relative (bound 1e-4), weights within 6.5e-6
//! after 4 AdamW steps at lr 1e-2 (bound lr * 1e-3 per step = 4e-5; the weights move 4e-2,
//! 1000x the measured difference, 100x the bound, checked), loss within 6e-6 relative (a
//! difference of a KL and a policy term of similar size; bound 1e-4), metrics 1e-4.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::dist::{zero, Collective, Single, ThreadGroup};
use mmr1_fast::model::Qwen2;
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::rl::advantage::AdvantageConfig;
use mmr1_fast::rl::grpo::{KlConfig, KlEstimator, LossConfig};
use mmr1_fast::rl::reward::{RewardConfig, Verdict};
use mmr1_fast::rl::rollout::{generate, SamplingParams};
use mmr1_fast::rl::trainer::{
    update, update_with, Experience, GrpoExtras, GrpoSettings, UpdateReport,
};
use mmr1_fast::train::Workspace;

const VOCAB: usize = 37;
const LR: f32 = 1e-2;

fn settings() -> GrpoSettings {
    GrpoSettings {
        group_size: 3,
        sampling: SamplingParams { temperature: 0.8, max_new_tokens: 6, ..Default::default() },
        loss: LossConfig {
            kl: Some(KlConfig { estimator: KlEstimator::K3, coef: 0.05 }),
            clip_eps_low: 0.2,
            clip_eps_high: 0.28,
            // A small entropy bonus, so the merged metrics carry an entropy (every rank must
            // report it, ranks without groups included: grpo_ranks_without_groups_...).
            entropy_coef: 1e-3,
            ..LossConfig::mmr1()
        },
        adv: AdvantageConfig::verl(),
        reward: RewardConfig::default(),
        ppo_epochs: 2,
        mini_batches: 2,
        micro_batch_tokens: 23,
        extras: GrpoExtras { top_entropy_quantile: Some(0.6), ..Default::default() },
    }
}

/// 5 ragged prompts x 3 responses; mini-batches of 3 and 2 groups, so 2 and 3 ranks get
/// uneven shards and some ranks none of a mini-batch.
fn experience(model: &Qwen2<Cpu>, s: &GrpoSettings) -> Experience {
    let prompts: Vec<Vec<u32>> = [4, 7, 3, 5, 6]
        .iter()
        .enumerate()
        .map(|(i, &n)| random_ids(n, VOCAB, i as u64 + 1))
        .collect();
    let rolls =
        generate(model, &Cpu, &prompts, s.group_size, &s.sampling, 21, None, |_| {}).unwrap();
    let n = rolls.len();
    Experience {
        items: (0..prompts.len()).collect(),
        prompts,
        responses: rolls.into_iter().map(|r| r.tokens).collect(),
        verdicts: vec![Verdict { extracted: None, accuracy: 0.0, format: 0.0 }; n],
        rewards: vec![0.0; n],
        advantages: (0..n).map(|i| [1.3, -0.9, 0.4, -1.6, 0.7, 0.2, -0.3][i % 7]).collect(),
        group_size: s.group_size,
        rollout: Default::default(),
    }
}

fn run(comm: Option<&dyn Collective<Cpu>>) -> (Vec<f32>, UpdateReport) {
    let start = random_model(tiny_config(VOCAB, true), 17);
    let reference = random_model(tiny_config(VOCAB, true), 17);
    let s = settings();
    let exp = experience(&start, &s);
    let mut policy = start;
    let mut opt = AdamW::new(&Cpu, &policy.params, AdamwConfig::default());
    let mut ws = Workspace::new(&policy, &Cpu);
    let rep = match comm {
        None => update(&mut policy, Some(&reference), &mut opt, &Cpu, &exp, &s, LR, &mut ws),
        Some(c) => {
            update_with(&mut policy, Some(&reference), &mut opt, &Cpu, &exp, &s, LR, &mut ws, c)
        }
    }
    .unwrap();
    (policy.to_host(&Cpu).concat(), rep)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

fn check_world(world: usize) {
    let (one, one_rep) = run(None);
    let init = random_model(tiny_config(VOCAB, true), 17).to_host(&Cpu).concat();
    let ranks: Vec<(Vec<f32>, UpdateReport)> = std::thread::scope(|s| {
        let hs: Vec<_> =
            ThreadGroup::new(world).into_iter().map(|g| s.spawn(move || run(Some(&g)))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, (w, rep)) in ranks.iter().enumerate() {
        assert!(
            w.iter().zip(&ranks[0].0).all(|(a, b)| a.to_bits() == b.to_bits()),
            "rank {r} holds other weights than rank 0"
        );
        assert_eq!(rep.loss.to_bits(), ranks[0].1.loss.to_bits(), "rank {r} reports another loss");
    }
    let (dp, rep) = &ranks[0];
    if world == 1 {
        assert!(dp.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(rep.loss.to_bits(), one_rep.loss.to_bits());
        let single = run(Some(&Single));
        assert!(single.0.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    let steps = one_rep.steps.len();
    assert_eq!(steps, 4);
    let diff = |a: &[f32], b: &[f32]| {
        a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
    };
    let (w_err, travel) = (diff(dp, &one), diff(&one, &init));
    let (m, m1) = (&rep.metrics, &one_rep.metrics);
    eprintln!(
        "MEASURED world {world}: weights max|diff| {w_err:.3e} after {steps} steps (lr {LR}), \
         moved {travel:.3e}; loss {:.6e} vs {:.6e}; kl {:.4e} vs {:.4e}; clip_frac {:.4} vs {:.4}",
        rep.loss, one_rep.loss, m.kl, m1.kl, m.clip_frac, m1.clip_frac
    );
    let gn: Vec<String> = rep
        .steps
        .iter()
        .zip(&one_rep.steps)
        .map(|(a, b)| format!("{:.1e}", rel(a.grad_norm, b.grad_norm)))
        .collect();
    eprintln!("MEASURED world {world}: grad-norm rel diff per step {gn:?}");
    let tol = LR as f64 * 1e-3 * steps as f64;
    assert!(w_err < tol, "weights differ by {w_err:e} > {tol:e}");
    assert!(travel > 1e2 * tol, "the weights barely moved ({travel:e})");
    assert!(m1.kl > 0.0 && m1.clip_frac > 0.0, "the KL term and the clip must run: {m1:?}");
    assert_eq!(m.active_tokens, m1.active_tokens);
    for (a, b, what) in [
        (rep.loss, one_rep.loss, "loss"),
        (m.kl, m1.kl, "kl"),
        (m.pg_loss, m1.pg_loss, "pg_loss"),
        (m.clip_frac, m1.clip_frac, "clip_frac"),
        (m.clip_frac_low, m1.clip_frac_low, "clip_frac_low"),
        (m.clip_frac_high, m1.clip_frac_high, "clip_frac_high"),
    ] {
        assert!(rel(a, b) < 1e-4, "{what}: {a} vs {b}");
    }
    // The ranks' metrics merge with the entropy kept (or left out) as one process reports it.
    assert_eq!(m.entropy.is_some(), m1.entropy.is_some(), "entropy: {m:?} vs {m1:?}");
    if let (Some(a), Some(b)) = (m.entropy, m1.entropy) {
        assert!(rel(a, b) < 1e-4, "entropy: {a} vs {b}");
    }
    for (i, (a, b)) in rep.steps.iter().zip(&one_rep.steps).enumerate() {
        let bound = if i == 0 { 1e-7 } else { 1e-4 };
        assert!(rel(a.grad_norm, b.grad_norm) < bound, "step {i}: grad norms {a:?} vs {b:?}");
    }
}

#[test]
fn grpo_group_of_one_is_the_plain_update_bit_for_bit() {
    check_world(1);
}

#[test]
fn grpo_two_ranks_match_one_process() {
    check_world(2);
}

#[test]
fn grpo_three_ranks_match_one_process() {
    check_world(3);
}

/// 6 ranks for 5 groups (mini-batches of 3 and 2): ranks 3-5 hold no micro-batch at all, so
/// their empty metrics must not reach the merge (they would drop the entropy everyone else has).
#[test]
fn grpo_ranks_without_groups_match_one_process() {
    check_world(6);
}

/// Sharded rollouts (`collect_with`): each rank decodes and grades its share of the prompts,
/// seeded as the whole batch seeds them; the gathered experience (responses, verdicts,
/// rewards, advantages and batch statistics over the WHOLE batch) is the one-process
/// `collect`'s bit for bit on every rank, with 2 and 3 ranks over 5 prompts (uneven shards)
/// and 7 ranks (some with none). Rewards vary through the overlong penalty, so a response
/// in the wrong group or with another seed shows.
#[test]
fn sharded_rollouts_are_the_whole_batchs_on_every_rank() {
    use mmr1_fast::data::demo::{demo_prompt, demo_tokenizer};
    use mmr1_fast::data::rl_items::RlItem;
    use mmr1_fast::rl::overlong::OverlongPenalty;
    use mmr1_fast::rl::trainer::{collect, collect_with};

    let tok = demo_tokenizer().unwrap();
    let model = random_model(tiny_config(tok.vocab_size(), false), 23);
    let items: Vec<RlItem> = ["Add 1+2", "Add 4+5+6", "Add 7+8", "Add 9+9", "Add 3+3+3+3"]
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
    let mut s = settings();
    s.sampling.stop_ids = (1..40).collect();
    s.sampling.max_new_tokens = 6;
    s.extras.overlong =
        Some(OverlongPenalty { buffer_len: 4, penalty_factor: 1.0, max_response_len: 6 });
    let indices = [3usize, 0, 4, 2, 1];
    let key = |e: &Experience| {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        (e.items.clone(), e.responses.clone(), bits(&e.rewards), bits(&e.advantages))
    };
    let (one, one_stats) =
        collect(&model, &Cpu, &tok, &items, &prompt_ids, &indices, &s, 9, |_| {}).unwrap();
    let rewards: Vec<f32> = one.rewards.clone();
    assert!(rewards.iter().any(|&r| r != rewards[0]), "rewards vary: {rewards:?}");
    for world in [2, 3, 7] {
        let got: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = ThreadGroup::new(world)
                .into_iter()
                .map(|g| {
                    let (model, tok, items, prompt_ids, s) =
                        (&model, &tok, &items, &prompt_ids, &s);
                    sc.spawn(move || {
                        collect_with(
                            model,
                            &Cpu,
                            tok,
                            items,
                            prompt_ids,
                            &indices,
                            s,
                            9,
                            |_| {},
                            &g,
                        )
                        .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (r, (exp, stats)) in got.iter().enumerate() {
            assert!(key(exp) == key(&one), "world {world}, rank {r}: another experience");
            assert_eq!(exp.verdicts, one.verdicts);
            assert_eq!(stats, &one_stats, "world {world}, rank {r}");
        }
    }
}

/// The VPS-table drift check of a data-parallel RL phase: equal tables pass; a table that
/// differs on one rank (one item's score) fails on every rank, naming that rank.
#[test]
fn a_rank_whose_vps_table_drifted_fails_every_rank() {
    use mmr1_fast::pipeline::rl_phase::same_table_on_every_rank;
    use mmr1_fast::rl::vas::VpsTable;
    let table = |drift: bool| {
        let mut t = VpsTable::new(4);
        let toks: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4], vec![1, 2, 5, 6]];
        let refs: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
        t.refresh(1, &[1.0, 0.0], &refs, 1);
        if drift {
            t.refresh(2, &[1.0, 1.0], &refs, 1);
        }
        t
    };
    for drifting in [None, Some(2)] {
        let out: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = ThreadGroup::new(3)
                .into_iter()
                .map(|g| {
                    sc.spawn(move || {
                        let r = Collective::<Cpu>::rank(&g);
                        let t = table(drifting == Some(r));
                        same_table_on_every_rank::<Cpu>(&g, &t, 7).map_err(|e| e.to_string())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in out {
            match drifting {
                None => r.unwrap(),
                Some(_) => {
                    assert!(r.unwrap_err().contains("step 7: the VPS table of rank 2"), "drift")
                }
            }
        }
    }
}

/// A ZeRO-2 update on `world` thread ranks with the gradients reduce-scattered in buckets
/// during the backward (`buckets`) or after it; the policy's head untied unless `tie`, so the
/// head bucket goes first. Returns rank 0's weights and reports (every rank's weights equal).
fn zero2_run(world: usize, s: &GrpoSettings, buckets: bool, tie: bool) -> (Vec<f32>, UpdateReport) {
    let out = std::thread::scope(|sc| {
        let hs: Vec<_> = ThreadGroup::new(world)
            .into_iter()
            .map(|g| {
                let mut s = s.clone();
                s.extras.grad_buckets = buckets;
                sc.spawn(move || {
                    let start = random_model(tiny_config(VOCAB, tie), 17);
                    let reference = random_model(tiny_config(VOCAB, tie), 17);
                    let exp = experience(&start, &s);
                    let mut policy = start;
                    let cfg = AdamwConfig::default();
                    let mut opt = zero::fresh_optimizer(&Cpu, &g, &policy.params, cfg, 2).unwrap();
                    let mut ws = Workspace::new(&policy, &Cpu);
                    let rep = update_with(
                        &mut policy,
                        Some(&reference),
                        &mut opt,
                        &Cpu,
                        &exp,
                        &s,
                        LR,
                        &mut ws,
                        &g,
                    )
                    .unwrap();
                    if buckets {
                        assert!(ws.grads.iter().all(|g| g.is_empty()), "no gradient held after");
                    }
                    (policy.to_host(&Cpu).concat(), rep)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    for (r, o) in out.iter().enumerate() {
        let same = o.0.iter().zip(&out[0].0).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "rank {r} holds other weights than rank 0");
    }
    out.into_iter().next().unwrap()
}

/// GRPO's mini-batch updates with ZeRO-2's bucketed reduce-scatter (`dist::buckets`) on 1, 2
/// and 3 ranks (some ranks without a group of a mini-batch): with one micro-batch per rank
/// and mini-batch, the unbucketed ZeRO-2 bits, tied and untied heads (untied: the head bucket
/// goes first); with several (micro-batches of 23 tokens, counts differing between ranks)
/// within f32 rounding, which this sensitive model amplifies from step to step: the file's
/// bounds (module comment), weights within lr * 1e-3 per optimizer step (4 steps), gradient
/// norms 1e-4 relative. That check runs on the tied model, as the file's others do: the
/// untied one has step-1 gradient elements within rounding of zero, and AdamW's first step
/// moves a weight by about lr whatever its gradient's size, so ANY change of summation order
/// flips some of them (measured in one process, micro-batches of 40 tokens vs one: weights
/// 1.6e-2 apart after 2 steps at lr 1e-2), bucketed or not.
#[test]
fn grpo_bucketed_zero2_matches_the_unbucketed_update() {
    let one_micro = GrpoSettings { micro_batch_tokens: 1 << 12, ..settings() };
    for world in [1, 2, 3] {
        for tie in [true, false] {
            let (b, _) = zero2_run(world, &one_micro, true, tie);
            let (w, _) = zero2_run(world, &one_micro, false, tie);
            let same = b.iter().zip(&w).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "world {world} tie {tie}: one micro-batch per rank must be bitwise");
        }
        let (b, rb) = zero2_run(world, &settings(), true, true);
        let (w, rw) = zero2_run(world, &settings(), false, true);
        let d = b.iter().zip(&w).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
        let norm = rb.steps.iter().zip(&rw.steps).map(|(x, y)| rel(x.grad_norm, y.grad_norm));
        let norm = norm.fold(0.0, f64::max);
        eprintln!("MEASURED GRPO bucketed vs unbucketed ZeRO-2, world {world}: weights max|diff| {d:.3e}, grad norm rel {norm:.3e}");
        assert_eq!(rb.steps.len(), 4);
        assert!(d <= LR as f64 * 1e-3 * 4.0, "world {world}: weights differ by {d}");
        assert!(norm <= 1e-4, "world {world}: gradient norms differ by {norm}");
    }
}
