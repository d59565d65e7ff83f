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

use crate::sft_common;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::data::sft_data::{load_sft_dataset, SftExample};
use mmr1_fast::dist::{sync_replicas, zero, Collective, ThreadGroup};
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
/// here), with the optimizer built as the rank's block from the start. ZeRO-2 here with
/// `grad_buckets` off: several micro-batches per rank, which the bucketed exchange adds in
/// another order (`bucketed_zero2_*` below).
#[test]
fn zero_stages_give_the_replicated_weights_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_model(&tmp.path().join("m"), 16, 5);
    let data = dataset(tmp.path(), 11);
    let want = zero_run(tmp.path(), &data, 3, 0, false, cfg(), 6);
    for stage in [1, 2] {
        let got = zero_run(tmp.path(), &data, 3, stage, false, cfg(), 6);
        assert!(
            bits(&got.weights) == bits(&want.weights),
            "ZeRO-{stage} differs from the replicated run"
        );
    }
}

// ---- ZeRO-2 with the gradients reduce-scattered in buckets during the backward ------------

/// What a ZeRO run on thread ranks ends with (rank 0's view; every rank's weights are checked
/// equal), and each rank's gradient peak of the first step.
struct ZeroRun {
    weights: Vec<f32>,
    /// AdamW's m and v, consolidated (whole, layout order).
    m: Vec<f32>,
    v: Vec<f32>,
    /// Per rank: (gradient values live at the first step's peak, the rank's block length).
    peaks: Vec<(usize, usize)>,
    /// Micro-batches of the first step, summed over ranks.
    first_micro: usize,
    total: usize,
    bucket_peak: usize,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `steps` steps of `world` thread ranks at ZeRO `stage`, bucketed or not.
fn zero_run(
    dir: &Path,
    data: &[SftExample],
    world: usize,
    stage: u8,
    buckets: bool,
    c: SftConfig,
    steps: usize,
) -> ZeroRun {
    let out: Vec<ZeroRun> = std::thread::scope(|s| {
        let hs: Vec<_> = ThreadGroup::new(world)
            .into_iter()
            .map(|g| {
                let (data, c) = (data.to_vec(), c.clone());
                s.spawn(move || {
                    let model = Qwen2::load(&Cpu, &dir.join("m")).unwrap();
                    let mut t = SftTrainer::new_ranked(&Cpu, model, data, c, &g, stage).unwrap();
                    t.grad_buckets = buckets;
                    assert_eq!(t.bucketed(), buckets && stage == 2);
                    sync_replicas(&Cpu, &g, &mut t.model, &mut t.opt).unwrap();
                    let (mut peak, mut first_micro) = (None, 0);
                    for _ in 0..steps {
                        let m = t.step_with(&Cpu, &g).unwrap();
                        assert!(!m.skipped);
                        if peak.is_none() {
                            let block = t.opt.zero.as_ref().map_or(0, |z| z.range.len());
                            peak = Some((t.grad_peak_values, block));
                            first_micro = m.micro_batches;
                        }
                    }
                    let full = zero::consolidated(&Cpu, &g, &t.opt).unwrap();
                    let (m, v) = match &full {
                        Some(h) => (h.m.concat(), h.v.concat()),
                        None => (flat(&t.opt.m), flat(&t.opt.v)),
                    };
                    let total = t.model.params.iter().map(Vec::len).sum();
                    ZeroRun {
                        weights: flat(&t.model.params),
                        m,
                        v,
                        peaks: vec![peak.unwrap()],
                        first_micro,
                        total,
                        bucket_peak: t.model.layout.bucketed_grad_peak(),
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let peaks = out.iter().map(|r| r.peaks[0]).collect();
    for (r, o) in out.iter().enumerate() {
        assert!(bits(&o.weights) == bits(&out[0].weights), "rank {r} holds other weights");
    }
    ZeroRun { peaks, ..out.into_iter().next().unwrap() }
}

/// The bytes of gradients a rank holds at the step's peak, as counted from the live buffers:
/// bucketed, its block plus the end bucket and one layer (`ParamLayout::bucketed_grad_peak`);
/// unbucketed, the whole gradient plus the block the reduce-scatter returns.
fn check_peaks(bucketed: &ZeroRun, whole: &ZeroRun, world: usize) {
    for (r, (&(b, block), &(w, wblock))) in bucketed.peaks.iter().zip(&whole.peaks).enumerate() {
        assert_eq!(block, wblock);
        assert_eq!(block, mmr1_fast::dist::shard(bucketed.total, r, world).len());
        assert_eq!(w, whole.total + block, "world {world} rank {r}: unbucketed peak");
        assert_eq!(b, block + bucketed.bucket_peak, "world {world} rank {r}: bucketed peak");
    }
    eprintln!(
        "MEASURED gradient peak, world {world}, rank 0: {} values bucketed (block {} + in flight {}) vs {} unbucketed ({} parameters)",
        bucketed.peaks[0].0, bucketed.peaks[0].1, bucketed.bucket_peak, whole.peaks[0].0, whole.total
    );
}

/// One micro-batch per rank and step (a budget no step exceeds): the bucketed sums are the
/// unbucketed ones, so weights and both moments equal `--zero 2` unbucketed and `--zero 0`
/// bit for bit after 3 steps (the third has one sequence: ranks 1 and 2 have none and reduce
/// zero buckets), on 1, 2 and 3 ranks (the total is not a multiple of 3).
#[test]
fn bucketed_zero2_with_one_micro_batch_per_rank_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_model(&tmp.path().join("m"), 16, 5);
    let data = dataset(tmp.path(), 11);
    let one_micro = SftConfig { micro_batch_tokens: 4096, ..cfg() };
    for world in [1, 2, 3] {
        let run = |stage, buckets| {
            zero_run(tmp.path(), &data, world, stage, buckets, one_micro.clone(), 3)
        };
        let (b, w, z0) = (run(2, true), run(2, false), run(0, false));
        assert!(b.total % 3 != 0, "a total 3 ranks do not divide");
        assert_eq!(b.first_micro, world.min(5), "one micro-batch per rank");
        for (other, name) in [(&w, "ZeRO-2 unbucketed"), (&z0, "ZeRO-0")] {
            assert!(bits(&b.weights) == bits(&other.weights), "world {world}: weights vs {name}");
            assert!(bits(&b.m) == bits(&other.m), "world {world}: m vs {name}");
            assert!(bits(&b.v) == bits(&other.v), "world {world}: v vs {name}");
        }
        check_peaks(&b, &w, world);
    }
}

/// Several micro-batches per rank, counts differing between ranks (micro-batches of at most
/// 40 tokens; the third step has one sequence, so two of three ranks have none): the bucketed
/// block is the sum over micro-batches of rank sums, the unbucketed one the rank sum of
/// micro-batch sums, so they agree to f32 rounding. Tolerance (stated in
/// docs/distributed.md): weights within lr * 1e-4 per step (the replicated path's
/// reduction-order bound of this file), moments within 1e-5 of their largest magnitude.
#[test]
fn bucketed_zero2_with_ragged_micro_batches_is_within_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_model(&tmp.path().join("m"), 16, 5);
    let data = dataset(tmp.path(), 11);
    let init = flat(&Qwen2::load(&Cpu, &tmp.path().join("m")).unwrap().params);
    let steps = 3;
    for world in [1, 2, 3] {
        let b = zero_run(tmp.path(), &data, world, 2, true, cfg(), steps);
        let w = zero_run(tmp.path(), &data, world, 2, false, cfg(), steps);
        assert!(b.first_micro > world, "several micro-batches per rank ({})", b.first_micro);
        let dw = max_abs_diff(&b.weights, &w.weights);
        let dm = max_abs_diff(&b.m, &w.m) / max_abs(&w.m);
        let dv = max_abs_diff(&b.v, &w.v) / max_abs(&w.v);
        let moved = max_abs_diff(&w.weights, &init);
        eprintln!(
            "MEASURED bucketed vs unbucketed ZeRO-2, world {world}, {steps} steps: weights max|diff| {dw:.3e} (moved {moved:.3e}), m {dm:.3e}, v {dv:.3e} of max"
        );
        let tol = LR as f64 * 1e-4 * steps as f64;
        assert!(dw <= tol, "world {world}: weights differ by {dw:e} > {tol:e}");
        assert!(dm <= 1e-5 && dv <= 1e-5, "world {world}: moments differ: m {dm:e}, v {dv:e}");
        assert!(moved > 100.0 * tol, "the weights barely moved ({moved:e})");
        check_peaks(&b, &w, world);
    }
}
