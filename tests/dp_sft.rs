//! Data-parallel SFT on in-process ranks (`dist::ThreadGroup`, CPU backend): 2 and 3 ranks
//! end at the weights of one process that trains on the whole batch, and every rank holds the
//! very same bits.
//!
//! Tolerance. The ranks' summed gradient is the single-process gradient with its f32 additions
//! in another order (each rank accumulates its own micro-batches, then the shards are added in
//! rank order), so gradients agree to a few f32 ulps of their magnitude, not bit for bit.
//! AdamW divides by sqrt(v): that keeps a relative error relative, but an element whose
//! gradient nearly cancels can move by a visible fraction of lr. Measured here (stderr line
//! `MEASURED`): first-step gradients within 8e-8 of their max magnitude, weights within 2e-7
//! after 6 steps at lr 1e-2 (weights of magnitude ~0.05: ~100 f32 ulps), losses within 4e-9
//! relative. Bounds: gradients 1e-5 relative, weights lr * 1e-4 per step (6e-6), losses
//! 1e-7 relative; the weights must travel over 1000x the weight bound (checked, so a run that
//! did not train cannot pass). A world of one rank must equal the plain path bit for bit.

mod sft_common;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::data::sft_data::{load_sft_dataset, SftExample};
use mmr1_fast::dist::{sync_replicas, Collective, ThreadGroup};
use mmr1_fast::model::Qwen2;
use mmr1_fast::optim::AdamwConfig;
use mmr1_fast::tokenizer::Tokenizer;
use mmr1_fast::train::sft::{SftConfig, SftTrainer};
use sft_common::*;
use std::path::Path;

const LR: f32 = 1e-2;

fn dataset(dir: &Path, n: usize) -> Vec<SftExample> {
    let p = dir.join("data.jsonl");
    std::fs::write(&p, synthetic_jsonl(n)).unwrap();
    let tok = Tokenizer::from_file(&tokenizer_path()).unwrap();
    load_sft_dataset(&p, &tok, None, 512).unwrap().0
}

/// 11 ragged examples, 5 per step: steps of 5, 5 and 1 sequences, so with 2 and 3 ranks the
/// shards are uneven and on the last step some ranks have none. Micro-batches of at most 40
/// tokens: several per shard.
fn cfg() -> SftConfig {
    SftConfig {
        epochs: 2,
        batch_size: 5,
        micro_batch_tokens: 40,
        max_len: 512,
        lr: LR,
        min_lr: 0.0,
        warmup_ratio: 0.1,
        cosine: true,
        adamw: AdamwConfig { weight_decay: 0.01, ..AdamwConfig::default() },
        seed: 3,
    }
}

struct Run {
    weights: Vec<f32>,
    /// The summed gradient of the first step.
    first_grad: Vec<f32>,
    losses: Vec<f64>,
    trained_tokens: Vec<usize>,
}

fn flat(bufs: &[Vec<f32>]) -> Vec<f32> {
    bufs.iter().flat_map(|b| Cpu.download(b)).collect()
}

fn train(dir: &Path, data: Vec<SftExample>, comm: &dyn Collective<Cpu>) -> Run {
    let mut model = Qwen2::load(&Cpu, &dir.join("m")).unwrap();
    if comm.rank() != 0 {
        // Ranks that start apart are made replicas of rank 0 by `sync_replicas`.
        for p in &mut model.params {
            Cpu.scale(p, 1.5);
        }
    }
    let mut t = SftTrainer::new(&Cpu, model, data, cfg()).unwrap();
    sync_replicas(&Cpu, comm, &mut t.model, &mut t.opt).unwrap();
    let (mut losses, mut trained_tokens, mut first_grad) = (vec![], vec![], None);
    while !t.done() {
        let m = t.step_with(&Cpu, comm).unwrap();
        assert!(!m.skipped);
        losses.push(m.loss);
        trained_tokens.push(m.trained_tokens);
        first_grad.get_or_insert_with(|| flat(&t.ws.grads));
    }
    Run { weights: flat(&t.model.params), first_grad: first_grad.unwrap(), losses, trained_tokens }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
}

fn max_abs(a: &[f32]) -> f64 {
    a.iter().map(|x| x.abs() as f64).fold(0.0, f64::max)
}

fn check_world(world: usize) {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_model(&tmp.path().join("m"), 16, 5);
    let data = dataset(tmp.path(), 11);
    let init = flat(&Qwen2::load(&Cpu, &tmp.path().join("m")).unwrap().params);
    let one = train(tmp.path(), data.clone(), &mmr1_fast::dist::Single);
    let ranks: Vec<Run> = std::thread::scope(|s| {
        let hs: Vec<_> = ThreadGroup::new(world)
            .into_iter()
            .map(|g| {
                let data = data.clone();
                let dir = tmp.path();
                s.spawn(move || train(dir, data, &g))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let steps = one.losses.len();
    assert_eq!(steps, 6);
    for (r, run) in ranks.iter().enumerate() {
        assert!(
            run.weights.iter().zip(&ranks[0].weights).all(|(a, b)| a.to_bits() == b.to_bits()),
            "rank {r} holds other weights than rank 0"
        );
        assert_eq!(run.losses, ranks[0].losses, "rank {r} reports other losses");
        assert_eq!(run.trained_tokens, one.trained_tokens);
    }
    let dp = &ranks[0];
    let grad_err = max_abs_diff(&dp.first_grad, &one.first_grad) / max_abs(&one.first_grad);
    let w_err = max_abs_diff(&dp.weights, &one.weights);
    let travel = max_abs_diff(&one.weights, &init);
    let loss_err =
        dp.losses.iter().zip(&one.losses).map(|(a, b)| (a - b).abs() / b.abs()).fold(0.0, f64::max);
    eprintln!(
        "MEASURED world {world}: first-step gradient max|diff|/max|g| {grad_err:.3e}, \
         weights max|diff| {w_err:.3e} after {steps} steps (lr {LR}), weights moved {travel:.3e}, \
         loss rel diff {loss_err:.3e}"
    );
    if world == 1 {
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&dp.weights, &one.weights) && same(&dp.first_grad, &one.first_grad));
        assert_eq!(dp.losses, one.losses);
    }
    assert!(grad_err < 1e-5, "summed gradient differs: {grad_err:e}");
    let tol = LR as f64 * 1e-4 * steps as f64;
    assert!(w_err < tol, "weights differ by {w_err:e} > {tol:e}");
    assert!(travel > 1e3 * tol, "the weights barely moved ({travel:e}): the test proves nothing");
    assert!(loss_err < 1e-7, "losses differ: {loss_err:e}");
}

#[test]
fn a_group_of_one_is_the_plain_path_bit_for_bit() {
    check_world(1);
}

#[test]
fn two_ranks_match_one_process() {
    check_world(2);
}

#[test]
fn three_ranks_match_one_process() {
    check_world(3);
}

/// ZeRO-1 and ZeRO-2 (`dist::zero`) on 3 thread ranks: every rank ends at the replicated
/// 3-rank run's weights bit for bit (the sharded step's updates are the replicated ones; see
/// the module comment of `dist::zero` for the one f64 norm difference, which does not show
/// here), with the optimizer built as the rank's block from the start.
#[test]
fn zero_stages_give_the_replicated_weights_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_model(&tmp.path().join("m"), 16, 5);
    let data = dataset(tmp.path(), 11);
    let run = |stage: u8| -> Vec<Vec<u32>> {
        std::thread::scope(|s| {
            let hs: Vec<_> = ThreadGroup::new(3)
                .into_iter()
                .map(|g| {
                    let (data, dir) = (data.clone(), tmp.path());
                    s.spawn(move || {
                        let model = Qwen2::load(&Cpu, &dir.join("m")).unwrap();
                        let mut t =
                            SftTrainer::new_ranked(&Cpu, model, data, cfg(), &g, stage).unwrap();
                        assert_eq!(t.opt.zero.is_some(), stage > 0);
                        sync_replicas(&Cpu, &g, &mut t.model, &mut t.opt).unwrap();
                        while !t.done() {
                            assert!(!t.step_with(&Cpu, &g).unwrap().skipped);
                        }
                        flat(&t.model.params).iter().map(|x| x.to_bits()).collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let want = run(0);
    for stage in [1, 2] {
        for (r, w) in run(stage).iter().enumerate() {
            assert!(w == &want[0], "ZeRO-{stage}: rank {r} differs from the replicated run");
        }
    }
}
