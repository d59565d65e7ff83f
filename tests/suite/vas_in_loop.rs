//! Variance-Aware Sampling inside the real RL loop (`pipeline::rl_phase::RlPhase::run`), on a
//! tiny random demo model. From the per-step checkpoints (the sampler RNG, the VPS table and
//! the pending scores are all in `trainer_state.json`) and `metrics.jsonl` it checks:
//! - each step draws ceil(lambda B) prompts by VPS weight and the rest uniformly (this
//!   project's default rounding, `VasSampler::new`; MMR1 Algorithm 1 floors, available as
//!   `WeightedCount::Floor`), and the batch is exactly what the sampler draws from the table
//!   and RNG state the previous step left (the sampler's distribution itself is tested by
//!   chi-square in `src/rl/vas/tests.rs`);
//! - lambda 0 (uniform only) and 1 (weighted only) behave as defined;
//! - the VPS table is refreshed exactly every `t_update` steps, from exactly the rollouts
//!   collected since the last refresh, and is left alone in between.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::data::demo::{demo_config, demo_prompt, demo_tokenizer, DemoTask};
use mmr1_fast::pipeline::config::TrainConfig;
use mmr1_fast::pipeline::inputs::RunInputs;
use mmr1_fast::pipeline::metrics::MetricsLog;
use mmr1_fast::pipeline::rl_phase::{grpo_settings, RlPhase, RlState};
use mmr1_fast::rl::vas::{VasSampler, VpsTable};
use std::collections::{BTreeMap, BTreeSet};

const ITEMS: usize = 9;
const B: usize = 4;
const STEPS: u64 = 7;
const T_UPDATE: usize = 3;

/// Runs the phase; returns the state before step 1, the state after each step, and the
/// metrics lines.
fn run_phase(lambda: f32) -> (RlState, Vec<RlState>, Vec<serde_json::Value>) {
    let tmp = tempfile::tempdir().unwrap();
    let tok = demo_tokenizer().unwrap();
    let tok_path = tmp.path().join("tokenizer.json");
    tok.save(&tok_path).unwrap();
    let items = DemoTask::default().items(ITEMS, 3, "t");
    let prompt_ids: Vec<Vec<u32>> =
        items.iter().map(|it| tok.encode(&demo_prompt(it)).unwrap()).collect();
    let mut cfg = TrainConfig::demo();
    cfg.rl.steps = STEPS as usize;
    cfg.rl.batch_size = B;
    cfg.rl.group_size = 2;
    cfg.rl.max_new_tokens = 4;
    cfg.rl.kl_coef = 0.0;
    cfg.rl.dynamic_filter = false;
    // The old log-probs' own pass (skipped on-policy otherwise), so that the logged first-epoch
    // ratio deviation checks it against the update's forward.
    cfg.rl.old_logprob_pass = true;
    cfg.vas.enabled = true;
    cfg.vas.lambda = lambda;
    cfg.vas.t_update = T_UPDATE;
    cfg.vas.initial_scoring = false;
    cfg.vas.score_unseen = false;
    cfg.output.checkpoint_every = 1;
    cfg.output.keep_checkpoints = 100;
    cfg.eval.every = 0;
    cfg.output.dir = tmp.path().to_path_buf();
    let settings = grpo_settings(&cfg, tok.stop_ids());
    let inputs = RunInputs::from_parts(cfg, tok, tok_path, items, prompt_ids, vec![]).unwrap();
    let phase = RlPhase {
        be: &Cpu,
        inputs: &inputs,
        settings,
        dir: tmp.path().join("rl"),
        comm: &mmr1_fast::dist::Single,
    };
    let policy = random_model(demo_config(inputs.tok.vocab_size()), 4);
    let mut run = phase.start(policy, tmp.path()).unwrap();
    let before = run.state.clone();
    let mut log = MetricsLog::open(tmp.path(), None).unwrap();
    phase.run(&mut run, &mut log).unwrap();
    let states = (1..=STEPS)
        .map(|k| {
            let p = tmp.path().join(format!("rl/checkpoint-{k}/trainer_state.json"));
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
        })
        .collect();
    (before, states, read_lines(&tmp.path().join("metrics.jsonl")))
}

fn same_table(a: &VpsTable, b: &VpsTable) -> bool {
    a.items() == b.items()
}

fn check(lambda: f32, expect_weighted: usize) {
    let (before, states, metrics) = run_phase(lambda);
    let steps: Vec<&serde_json::Value> = metrics
        .iter()
        .filter(|m| m["phase"] == "rl" && m.get("weighted_prompts").is_some())
        .collect();
    assert_eq!(steps.len(), STEPS as usize);
    let mut prev = before;
    for (k, st) in (1..=STEPS).zip(&states) {
        let ctx = format!("lambda {lambda}, step {k}");
        let m = steps[k as usize - 1];
        assert_eq!(m["weighted_prompts"], expect_weighted as u64, "{ctx}: weighted count");
        assert_eq!(m["uniform_prompts"], (B - expect_weighted) as u64, "{ctx}: uniform count");
        // logp_old comes from the same forward on the same micro-batches as the first PPO
        // epoch: the logged first-epoch ratio deviation is exactly 0 on the CPU.
        assert_eq!(m["first_epoch_max_ratio_dev"], 0.0, "{ctx}: first-epoch ratio deviation");
        // The batch: what the sampler draws from the previous state.
        let mut rng = prev.sampler_rng.clone();
        let parts = VasSampler::new(lambda).sample_batch_parts(&prev.table, B, &mut rng);
        assert_eq!(parts.weighted.len(), expect_weighted, "{ctx}");
        let batch: Vec<usize> = parts.weighted.iter().chain(&parts.uniform).cloned().collect();
        assert_eq!(st.sampler_rng, rng, "{ctx}: the sampler RNG advanced differently");
        let refresh = k % T_UPDATE as u64 == 0;
        if refresh {
            assert!(st.pending.is_empty(), "{ctx}: pending scores survive a refresh");
            // Refreshed: exactly the items rolled out since the last refresh, each from its
            // latest rollouts; every other item untouched.
            let mut latest: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
            for p in &prev.pending {
                latest.insert(p.item, p.correctness.clone());
            }
            let since: BTreeSet<usize> =
                prev.pending.iter().map(|p| p.item).chain(batch.iter().cloned()).collect();
            for i in 0..ITEMS {
                let it = st.table.item(i);
                if since.contains(&i) {
                    assert_eq!(it.last_step, k, "{ctx}: item {i} was not refreshed");
                    assert!(it.vps.is_some());
                    if !batch.contains(&i) {
                        let c = &latest[&i];
                        let p = c.iter().sum::<f32>() / c.len() as f32;
                        assert_eq!(
                            it.pass_rate, p,
                            "{ctx}: item {i} refreshed from other rollouts"
                        );
                        assert_eq!(it.num_rollouts as usize, c.len());
                    }
                } else {
                    assert_eq!(it, prev.table.item(i), "{ctx}: item {i} changed without rollouts");
                }
            }
        } else {
            assert!(
                same_table(&st.table, &prev.table),
                "{ctx}: the table changed between refreshes"
            );
            // Pending grows by this step's groups, in batch order.
            assert_eq!(st.pending.len(), prev.pending.len() + B, "{ctx}: pending count");
            let new: Vec<usize> = st.pending[prev.pending.len()..].iter().map(|p| p.item).collect();
            assert_eq!(new, batch, "{ctx}: pending holds other items than the batch");
            assert!(st.pending.iter().all(|p| p.correctness.len() == 2 && p.tokens.len() == 2));
        }
        prev = st.clone();
    }
    // Something was refreshed at all (the checks above are not vacuous).
    assert!(states[T_UPDATE - 1].table.num_scored() > 0);
}

#[test]
fn vas_half_weighted_ceil_and_refresh_every_t_update() {
    // ceil(0.6 * 4) = 3 (floor would give 2).
    check(0.6, 3);
}

#[test]
fn vas_lambda_zero_is_all_uniform_and_one_is_all_weighted() {
    check(0.0, 0);
    check(1.0, B);
}
