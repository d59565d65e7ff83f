//! The RL kernels (src/backend/cuda/rl/) against their CPU references in src/rl/: the fused
//! GRPO-family loss against `policy_loss_f64`, group advantages against `advantages_f64`,
//! VAS scores against `score_item`. Random ragged batches (group sizes 1, 2, 3, 8, 16),
//! fully masked rows, log-ratios beyond +-20, both advantage signs, outputs poisoned with NaN.
//!
//! Runs on the CUDA emulator with `--features emu`, every launch under each schedule of
//! `Schedule::CI` with bit-identical results demanded, and on the real GPU with
//! `--features cuda` (#[ignore]d; scripts/gpu-check.sh runs them with --include-ignored).
#![cfg(any(feature = "emu", feature = "cuda"))]

use mmr1_fast::backend::cuda::device::Device;
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::rl_ops::{AdvBuf, LossBufs};
use mmr1_fast::backend::Backend;
use mmr1_fast::rl::advantage::{broadcast_to_tokens, Convention};
use mmr1_fast::rl::grpo::{
    policy_loss_f64, Aggregation, KlConfig, KlEstimator, LossConfig, LossInputs, LossMetrics,
    Normalizer, PolicyLoss,
};
use rand::Rng;

use crate::kernel_check;
use kernel_check::*;

/// One ragged batch: prompts with group sizes drawn from {1, 2, 3, 8}, responses of 0..40
/// tokens, some fully masked, log-ratios mostly small with a tail beyond +-20, advantages of
/// both signs (never exactly 0, except a few exact zeros to hit the `A == 0` branches).
struct Batch {
    logp: Vec<f32>,
    old: Vec<f32>,
    refl: Vec<f32>,
    ent: Vec<f32>,
    mask: Vec<f32>,
    pg_mask: Vec<f32>,
    selected: Vec<bool>,
    adv_resp: Vec<f32>,
    offsets: Vec<usize>,
}

fn batch(seed: u64) -> Batch {
    let mut r = rng(seed);
    let mut lens = Vec::new();
    for g in [1usize, 2, 3, 8, 1, 8, 3, 2] {
        for _ in 0..g {
            lens.push(r.gen_range(0..40usize));
        }
    }
    batch_of(&mut r, &lens)
}

/// A batch of responses with these lengths, its values drawn from `r` as `batch` draws them.
fn batch_of(r: &mut rand_chacha::ChaCha8Rng, lens: &[usize]) -> Batch {
    let mut offsets = vec![0usize];
    for l in lens {
        offsets.push(offsets.last().unwrap() + l);
    }
    let n = *offsets.last().unwrap();
    let fully_masked: Vec<bool> = (0..lens.len()).map(|i| i % 7 == 3).collect();
    let (mut logp, mut old, mut refl, mut ent, mut mask, mut pg_mask, mut selected) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, w) in offsets.windows(2).enumerate() {
        for _ in w[0]..w[1] {
            let lp: f32 = r.gen_range(-8.0..-0.01);
            // 1 token in 12 has a log-ratio beyond +-20 (clamps, overflowing ratios).
            let d: f32 = if r.gen_range(0..12) == 0 {
                if r.gen_bool(0.5) {
                    r.gen_range(20.5..30.0)
                } else {
                    -r.gen_range(20.5..30.0)
                }
            } else {
                r.gen_range(-0.6..0.6)
            };
            logp.push(lp);
            old.push(lp - d);
            let kd: f32 = if r.gen_range(0..10) == 0 {
                r.gen_range(-25.0..25.0)
            } else {
                r.gen_range(-1.0..1.0)
            };
            refl.push(lp + kd);
            ent.push(r.gen_range(0.01..5.0));
            mask.push(if fully_masked[i] || r.gen_range(0..6) == 0 { 0.0 } else { 1.0 });
            pg_mask.push(if r.gen_range(0..4) == 0 { 0.0 } else { 1.0 });
            selected.push(r.gen_range(0..3) == 0);
        }
    }
    let adv_resp: Vec<f32> = (0..lens.len())
        .map(|i| if i % 11 == 5 { 0.0 } else { r.gen_range(-2.0f32..2.0) })
        .collect();
    assert_eq!(logp.len(), n);
    Batch { logp, old, refl, ent, mask, pg_mask, selected, adv_resp, offsets }
}

const POLICIES: [PolicyLoss; 8] = [
    PolicyLoss::Vanilla,
    PolicyLoss::Gspo,
    PolicyLoss::Gpg,
    PolicyLoss::ClipCov,
    PolicyLoss::KlCov,
    PolicyLoss::GeoMean,
    PolicyLoss::Cispo,
    PolicyLoss::Sapo,
];
const AGGS: [Aggregation; 5] = [
    Aggregation::TokenMean,
    Aggregation::TokenSum,
    Aggregation::SeqMeanTokenSum,
    Aggregation::SeqMeanTokenMean,
    Aggregation::SeqMeanTokenSumNorm,
];
const KLS: [KlEstimator; 7] = [
    KlEstimator::K1,
    KlEstimator::Abs,
    KlEstimator::K2,
    KlEstimator::K3,
    KlEstimator::K1Plus,
    KlEstimator::AbsPlus,
    KlEstimator::K3Plus,
];

/// Options of one case beyond policy / aggregation / convention.
#[derive(Clone, Copy)]
struct Extras {
    kl: Option<KlEstimator>,
    ratio_weighted_kl: bool,
    entropy: bool,
    pg_mask: bool,
    per_token_adv: bool,
    trl_delta: bool,
}

impl Extras {
    /// The k3 KL term and the entropy term, nothing else (MMR1's loss plus an entropy bonus).
    const K3_ENTROPY: Extras = Extras {
        kl: Some(KlEstimator::K3),
        ratio_weighted_kl: false,
        entropy: true,
        pg_mask: false,
        per_token_adv: false,
        trl_delta: false,
    };
}

fn config(policy: PolicyLoss, agg: Aggregation, conv: Convention, x: Extras) -> LossConfig {
    let mut c = match conv {
        Convention::Mmr1 => LossConfig::mmr1(),
        Convention::Verl => LossConfig::verl(),
        Convention::Trl => LossConfig::trl(),
    };
    c.policy = policy;
    c.agg = agg;
    c.clip_eps_high = 0.28; // clip-higher: low and high bounds differ
    c.kl = x.kl.map(|estimator| KlConfig { estimator, coef: 0.03 });
    c.kl_ratio_weighted = x.ratio_weighted_kl;
    c.entropy_coef = if x.entropy { 0.007 } else { 0.0 };
    c.trl_delta = if x.trl_delta { Some(1.7) } else { None };
    c.cov.ppo_kl_coef = 0.3;
    c
}

struct Got {
    loss: f64,
    metrics: LossMetrics,
    dlogp: Vec<f32>,
    dent: Option<Vec<f32>>,
}

/// The loss on the device for responses `rows` of the batch (a micro-batch), with `norm`.
fn device_loss<D: Device>(
    b: &CudaBackend<D>,
    bt: &Batch,
    rows: std::ops::Range<usize>,
    cfg: &LossConfig,
    norm: Normalizer,
    x: Extras,
) -> Got {
    let (t0, t1) = (bt.offsets[rows.start], bt.offsets[rows.end]);
    let n = t1 - t0;
    let offsets: Vec<usize> = bt.offsets[rows.start..=rows.end].iter().map(|o| o - t0).collect();
    let up = |v: &[f32]| b.upload(&v[t0..t1]);
    let (logp, old, refl, ent, mask, pgm) =
        (up(&bt.logp), up(&bt.old), up(&bt.refl), up(&bt.ent), up(&bt.mask), up(&bt.pg_mask));
    let adv_resp = b.upload(&bt.adv_resp[rows.clone()]);
    let adv_tok = b.upload(&broadcast_to_tokens(&bt.adv_resp, &bt.offsets)[t0..t1]);
    let inputs = LossBufs {
        logp: &logp,
        logp_old: &old,
        advantages: if x.per_token_adv {
            AdvBuf::PerToken(&adv_tok)
        } else {
            AdvBuf::PerResponse(&adv_resp)
        },
        mask: &mask,
        ref_logp: x.kl.map(|_| &refl),
        entropy: x.entropy.then_some(&ent),
        pg_mask: x.pg_mask.then_some(&pgm),
        selected: Some(&bt.selected[t0..t1]),
        offsets: &offsets,
    };
    let mut dlogp = poisoned(b, n);
    let mut dent = poisoned(b, n);
    let out = b.grpo_loss(&inputs, cfg, norm, &mut dlogp, x.entropy.then_some(&mut dent));
    Got {
        loss: out.loss,
        metrics: out.metrics,
        dlogp: b.download(&dlogp),
        dent: x.entropy.then(|| b.download(&dent)),
    }
}

/// Per-token gradients: the kernel evaluates the reference's formulas in f64, in the same
/// order, and rounds to f32 as `policy_loss` does; only the order of the per-response sums
/// (n_i is exact; GSPO's and GMPO's log-ratio sums and GSPO's gradient spread are not) and the
/// device's exp/log (<= 1-2 ulp in f64) differ. Those move a value by ~1e-15 relative before
/// the f32 rounding, so each element may differ by one f32 rounding step: 2 ulp (2^-22
/// relative) plus 1e-12 of the batch's largest gradient for values that cancel to ~0.
fn assert_grad(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: token {i} is {g} (reference {w})");
        let tol = 2.0 * f32::EPSILON as f64 * w.abs() + 1e-12 * scale;
        let err = ((g as f64) - w).abs();
        assert!(err <= tol, "{what}: token {i}: {g:e} vs reference {w:e}");
        worst = worst.max(err / (w.abs() + 1e-12 * scale).max(f64::MIN_POSITIVE));
    }
    // Largest error relative to the element (read with --nocapture).
    println!("ERR grpo {what}: {worst:.3e}");
}

/// Sums in f64 in another order: relative 1e-12 (of the value, or of 1 for values near 0;
/// per-token terms are O(1) and up to e^30 with unclamped ratios, and a few hundred of them are
/// summed, so reordering moves a sum by ~1e-14 relative to its largest term).
fn assert_sum(what: &str, got: f64, want: f64) {
    assert!(got.is_finite(), "{what}: {got}");
    assert!(
        (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
        "{what}: {got:.17e} vs reference {want:.17e}"
    );
}

fn assert_metrics(what: &str, got: &LossMetrics, want: &LossMetrics) {
    assert_eq!(got.active_tokens, want.active_tokens, "{what}: active tokens");
    // Fractions of 0/1 counts are exact in both.
    assert_eq!(got.clip_frac_low, want.clip_frac_low, "{what}: clip_frac_low");
    assert_eq!(got.clip_frac_high, want.clip_frac_high, "{what}: clip_frac_high");
    assert_eq!(got.clip_frac, want.clip_frac, "{what}: clip_frac");
    assert_eq!(got.dual_clip_frac, want.dual_clip_frac, "{what}: dual_clip_frac");
    assert_sum(&format!("{what}: pg_loss"), got.pg_loss, want.pg_loss);
    assert_sum(&format!("{what}: kl_loss"), got.kl_loss, want.kl_loss);
    assert_sum(&format!("{what}: entropy_loss"), got.entropy_loss, want.entropy_loss);
    assert_sum(&format!("{what}: approx_kl"), got.approx_kl, want.approx_kl);
    assert_sum(&format!("{what}: kl"), got.kl, want.kl);
    assert_sum(&format!("{what}: mean_ratio"), got.mean_ratio, want.mean_ratio);
    match (got.entropy, want.entropy) {
        (Some(g), Some(w)) => assert_sum(&format!("{what}: entropy"), g, w),
        (g, w) => assert_eq!(g.is_some(), w.is_some(), "{what}: entropy present"),
    }
}

fn check_case<D: Device>(
    b: &CudaBackend<D>,
    bt: &Batch,
    cfg: &LossConfig,
    x: Extras,
    what: &str,
) -> LossMetrics {
    let adv_tok = broadcast_to_tokens(&bt.adv_resp, &bt.offsets);
    let norm = Normalizer::count(&bt.mask, &bt.offsets, 48);
    let mut inp = LossInputs::new(&bt.logp, &bt.old, &adv_tok, &bt.mask, &bt.offsets);
    inp.ref_logp = x.kl.map(|_| bt.refl.as_slice());
    inp.entropy = x.entropy.then_some(bt.ent.as_slice());
    inp.pg_mask = x.pg_mask.then_some(bt.pg_mask.as_slice());
    inp.selected = Some(&bt.selected);
    let want = policy_loss_f64(&inp, cfg, norm);
    let rows = bt.offsets.len() - 1;
    let got = device_loss(b, bt, 0..rows, cfg, norm, x);
    assert_grad(&format!("{what}: dlogp"), &got.dlogp, &want.dlogp);
    if let (Some(g), Some(w)) = (&got.dent, &want.dentropy) {
        assert_grad(&format!("{what}: dentropy"), g, w);
    }
    assert_sum(&format!("{what}: loss"), got.loss, want.loss);
    assert_metrics(what, &got.metrics, &want.metrics);
    want.metrics
}

/// Every policy loss x aggregation x convention, with the KL estimator, ratio weighting,
/// entropy bonus, policy mask, per-token advantages and TRL's delta cycling through the cases.
fn grpo_loss_every_mode<D: Device>(b: &CudaBackend<D>) {
    let bt = batch(11);
    let mut case = 0usize;
    let mut seen = LossMetrics::default();
    for policy in POLICIES {
        for agg in AGGS {
            // Each policy meets every convention as the cases advance.
            {
                let conv = [Convention::Mmr1, Convention::Verl, Convention::Trl][case % 3];
                let x = Extras {
                    kl: (case % 8 != 7).then(|| KLS[case % 7]),
                    ratio_weighted_kl: case % 3 == 1,
                    entropy: case.is_multiple_of(2),
                    pg_mask: case % 5 == 2,
                    per_token_adv: case % 4 == 3,
                    trl_delta: case % 6 == 4,
                };
                let cfg = config(policy, agg, conv, x);
                let m = check_case(
                    b,
                    &bt,
                    &cfg,
                    x,
                    &format!("{policy:?}/{agg:?}/{conv:?} case {case}"),
                );
                seen.clip_frac_low += m.clip_frac_low;
                seen.clip_frac_high += m.clip_frac_high;
                seen.clip_frac += m.clip_frac;
                seen.dual_clip_frac += m.dual_clip_frac;
                case += 1;
            }
        }
    }
    // The batch reaches every clip branch (else the comparison above proves little).
    assert!(
        seen.clip_frac_low > 0.0
            && seen.clip_frac_high > 0.0
            && seen.clip_frac > 0.0
            && seen.dual_clip_frac > 0.0,
        "{seen:?}"
    );
}

/// Each KL estimator with each policy loss (ratio-weighted or not), on a second batch.
fn grpo_loss_every_kl<D: Device>(b: &CudaBackend<D>) {
    let bt = batch(12);
    for (i, est) in KLS.into_iter().enumerate() {
        // Four policies per estimator, all eight across two estimators.
        for j in (0..4).map(|q| (i + 2 * q) % 8) {
            let policy = POLICIES[j];
            let x = Extras {
                kl: Some(est),
                ratio_weighted_kl: (i + j).is_multiple_of(2),
                entropy: j.is_multiple_of(3),
                pg_mask: false,
                per_token_adv: false,
                trl_delta: false,
            };
            let conv = [Convention::Mmr1, Convention::Verl, Convention::Trl][(i + j) % 3];
            let cfg = config(policy, AGGS[(i + 2 * j) % 5], conv, x);
            check_case(b, &bt, &cfg, x, &format!("{est:?}/{policy:?}"));
        }
    }
}

/// Micro-batching never changes the loss: with the global normaliser, the calls of any split
/// into whole responses give each token's gradient bit for bit and losses that sum to the
/// full batch's.
fn grpo_loss_split_invariant<D: Device>(b: &CudaBackend<D>) {
    let bt = batch(13);
    let rows = bt.offsets.len() - 1;
    let norm = Normalizer::count(&bt.mask, &bt.offsets, 48);
    for policy in POLICIES {
        let x = Extras { ratio_weighted_kl: policy == PolicyLoss::Gspo, ..Extras::K3_ENTROPY };
        let cfg = config(policy, Aggregation::SeqMeanTokenMean, Convention::Verl, x);
        let full = device_loss(b, &bt, 0..rows, &cfg, norm, x);
        let cuts = [0, 1, 5, 6, 17, rows];
        let mut loss = 0f64;
        let mut parts = Vec::new();
        for w in cuts.windows(2) {
            let part = device_loss(b, &bt, w[0]..w[1], &cfg, norm, x);
            let (t0, t1) = (bt.offsets[w[0]], bt.offsets[w[1]]);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&part.dlogp),
                bits(&full.dlogp[t0..t1]),
                "{policy:?}: dlogp of rows {w:?} depends on the split"
            );
            loss += part.loss;
            parts.push(part.metrics);
        }
        assert_sum(&format!("{policy:?}: split loss"), loss, full.loss);
        let merged = LossMetrics::merge(&parts);
        assert_eq!(merged.active_tokens, full.metrics.active_tokens);
        assert_sum(
            &format!("{policy:?}: split clip_frac"),
            merged.clip_frac,
            full.metrics.clip_frac,
        );
    }
}

/// The shapes of the two loss kernels: responses all of one length (no offsets: 1, 2, 3 and
/// 5 tokens are shorter than or straddle the streaming kernel's 4-token chunks), and batches
/// of several streaming blocks (2,048 tokens a block) with ragged lengths, empty and fully
/// masked responses and a partial last block, so that chunks straddle responses and blocks
/// end mid-response. The token-level losses take the streaming kernel, GSPO, GMPO and
/// seq-mean-token-mean the per-response one; both meet equal and ragged lengths.
fn grpo_loss_stream_shapes<D: Device>(b: &CudaBackend<D>) {
    let mut r = rng(14);
    let mut shapes: Vec<(String, Vec<usize>)> =
        [1usize, 2, 3, 5, 8].iter().map(|&l| (format!("7 x {l} tokens"), vec![l; 7])).collect();
    // Runs of empty and 1-3 token responses, so that chunks step over empty ones.
    let ragged: Vec<usize> = (0..170)
        .map(|i| match i % 6 {
            0 | 1 => 0,
            2 => r.gen_range(1..4),
            _ => r.gen_range(1..80),
        })
        .collect();
    shapes.push(("ragged, several blocks".into(), ragged));
    shapes.push(("150 x 37 tokens, several blocks".into(), vec![37; 150]));
    let cases = [
        (PolicyLoss::Vanilla, Aggregation::TokenMean, Convention::Mmr1),
        (PolicyLoss::ClipCov, Aggregation::SeqMeanTokenSum, Convention::Verl),
        (PolicyLoss::Sapo, Aggregation::TokenSum, Convention::Trl),
        (PolicyLoss::KlCov, Aggregation::SeqMeanTokenSumNorm, Convention::Mmr1),
        (PolicyLoss::Gspo, Aggregation::SeqMeanTokenMean, Convention::Verl),
        (PolicyLoss::GeoMean, Aggregation::TokenMean, Convention::Trl),
        (PolicyLoss::Cispo, Aggregation::SeqMeanTokenMean, Convention::Trl),
    ];
    for (k, (what, lens)) in shapes.iter().enumerate() {
        let bt = batch_of(&mut r, lens);
        for (j, &(policy, agg, conv)) in cases.iter().enumerate() {
            let x = Extras {
                kl: Some(KLS[(k + j) % 7]),
                ratio_weighted_kl: j == 4,
                entropy: (k + j).is_multiple_of(2),
                pg_mask: j == 1,
                per_token_adv: (k + j) % 3 == 2,
                trl_delta: j == 2,
            };
            let cfg = config(policy, agg, conv, x);
            check_case(b, &bt, &cfg, x, &format!("{what}: {policy:?}/{agg:?}/{conv:?}"));
        }
    }
}

/// No responses, and responses with no tokens: nothing written, a zero loss.
fn grpo_loss_empty<D: Device>(b: &CudaBackend<D>) {
    let cfg = LossConfig::verl();
    let norm = Normalizer::new(0.0, 0.0, 8.0);
    let e = b.upload(&[]);
    let adv = b.upload(&[0.5, -0.5]);
    for (offsets, a) in [(vec![0usize], &e), (vec![0, 0, 0], &adv)] {
        let mut d = b.upload(&[]);
        let inputs = LossBufs {
            logp: &e,
            logp_old: &e,
            advantages: AdvBuf::PerResponse(a),
            mask: &e,
            ref_logp: None,
            entropy: None,
            pg_mask: None,
            selected: None,
            offsets: &offsets,
        };
        let out = b.grpo_loss(&inputs, &cfg, norm, &mut d, None);
        assert_eq!(out.loss, 0.0);
        assert_eq!(out.metrics.active_tokens, 0.0);
    }
}

// ---- group advantages ------------------------------------------------------------------------

/// Ragged groups (sizes 1, 2, 3, 8, 16, empty), binary, continuous and constant rewards.
fn adv_batch(seed: u64) -> (Vec<f32>, Vec<usize>, Vec<usize>) {
    let mut r = rng(seed);
    let sizes = [1usize, 2, 3, 8, 16, 0, 8, 8, 1, 3, 2, 16, 8, 5];
    let (mut rewards, mut offsets) = (Vec::new(), vec![0usize]);
    for (g, &n) in sizes.iter().enumerate() {
        for _ in 0..n {
            rewards.push(match g % 4 {
                0 => r.gen_range(0..2) as f32,              // binary accuracy
                1 => r.gen_range(-1.5f32..2.5),             // graded / shaped
                2 => 0.1,                                   // constant: zero variance
                _ => [0.0f32, 1.0, 1.1][r.gen_range(0..3)], // accuracy + format bonus
            });
        }
        offsets.push(rewards.len());
    }
    let lengths = (0..rewards.len()).map(|_| r.gen_range(0..50usize)).collect();
    (rewards, offsets, lengths)
}

/// Every estimator x scaling x convention on one batch of groups, against `advantages_f64`.
fn adv_every_mode<D: Device>(
    b: &CudaBackend<D>,
    rewards: &[f32],
    offsets: &[usize],
    lengths: &[usize],
    label: &str,
) {
    use mmr1_fast::rl::advantage::{advantages_f64, AdvEstimator, AdvantageConfig, ScaleRewards};
    let r64: Vec<f64> = rewards.iter().map(|&x| x as f64).collect();
    let d_r = b.upload(rewards);
    for est in [
        AdvEstimator::Grpo,
        AdvEstimator::Rloo,
        AdvEstimator::ReinforcePlusPlusBaseline,
        AdvEstimator::Gpg,
    ] {
        for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
            for base in [AdvantageConfig::verl(), AdvantageConfig::trl()] {
                let cfg = AdvantageConfig { estimator: est, scale, ..base };
                let what = format!("{label}{est:?}/{scale:?}/{:?}", cfg.convention);
                let (want, ws) = advantages_f64(&r64, offsets, Some(lengths), &cfg);
                let mut adv = poisoned(b, rewards.len());
                let gs = b.group_advantages(&d_r, offsets, Some(lengths), &cfg, &mut adv);
                // f64 throughout; group sums in another order move a value by ~1e-16
                // relative, so the f32 results may differ by one rounding step. Constant
                // groups centre to ~1e-17 (a mean that is not exact in binary), which std
                // scaling lifts to ~1e-11: an absolute 1e-9 covers that and nothing more.
                let got = b.download(&adv);
                let mut worst = 0f64;
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let tol = 2.0 * f32::EPSILON as f64 * w.abs() + 1e-9;
                    assert!(
                        g.is_finite() && ((g as f64) - w).abs() <= tol,
                        "{what}: adv {i}: {g} vs {w}"
                    );
                    worst = worst.max(((g as f64) - w).abs() / w.abs().max(1e-9));
                }
                println!("ERR advantages {what}: {worst:.3e}");
                assert_eq!(gs.num_groups, ws.num_groups, "{what}: groups");
                assert_eq!(gs.num_zero_variance, ws.num_zero_variance, "{what}: zero variance");
                assert_sum(&format!("{what}: reward_mean"), gs.reward_mean, ws.reward_mean);
                assert_sum(&format!("{what}: reward_std"), gs.reward_std, ws.reward_std);
                assert_sum(
                    &format!("{what}: mean_group_std"),
                    gs.mean_group_std,
                    ws.mean_group_std,
                );
            }
        }
    }
}

fn group_advantages_every_mode<D: Device>(b: &CudaBackend<D>) {
    use mmr1_fast::rl::advantage::{advantages_f64, AdvantageConfig};
    let (rewards, offsets, lengths) = adv_batch(21);
    adv_every_mode(b, &rewards, &offsets, &lengths, "");
    // No rewards at all, and one singleton.
    for (rw, off) in [(vec![], vec![0usize]), (vec![0.7f32], vec![0, 1])] {
        let cfg = AdvantageConfig::verl();
        let r64: Vec<f64> = rw.iter().map(|&x| x as f64).collect();
        let (want, ws) = advantages_f64(&r64, &off, None, &cfg);
        let mut adv = poisoned(b, rw.len());
        let gs = b.group_advantages(&b.upload(&rw), &off, None, &cfg, &mut adv);
        let got = b.download(&adv);
        assert_eq!(got.len(), want.len());
        assert!(got.iter().zip(&want).all(|(g, w)| (*g as f64 - w).abs() < 1e-7));
        assert_eq!(gs, ws);
    }
}

/// Groups all of one size (no offsets: 1, 2, 3, 5, 8, 16, 32 and 40 rewards, the last past a
/// warp so that lanes loop), enough of them for several blocks (256 / lanes-per-group groups
/// a block), and ragged groups past a warp (33, 70) beside small ones: the segment widths of
/// `group_adv_seg_f32`, every estimator and scaling.
fn group_advantages_segment_widths<D: Device>(b: &CudaBackend<D>) {
    let mut r = rng(23);
    let mut cases: Vec<(usize, Vec<usize>)> = [1usize, 2, 3, 5, 8, 16, 32, 40]
        .iter()
        .map(|&g| {
            let groups = (600 / g).max(12);
            (g, (0..=groups).map(|i| i * g).collect())
        })
        .collect();
    let mut ragged = vec![0usize];
    for g in [33usize, 1, 70, 0, 8, 2, 33, 5] {
        ragged.push(ragged.last().unwrap() + g);
    }
    cases.push((0, ragged));
    for (g, offsets) in cases {
        let n = *offsets.last().unwrap();
        // Binary rewards with a few constant groups, and shaped ones.
        let rewards: Vec<f32> = (0..n)
            .map(|i| match (i / g.max(1)) % 5 {
                0 => 1.0,
                1 | 2 => r.gen_range(0..2) as f32,
                _ => r.gen_range(-1.5f32..2.5),
            })
            .collect();
        let lengths: Vec<usize> = (0..n).map(|_| r.gen_range(0..50usize)).collect();
        let label = if g > 0 { format!("groups of {g}: ") } else { "ragged past a warp: ".into() };
        adv_every_mode(b, &rewards, &offsets, &lengths, &label);
    }
}

/// The batch statistics over many blocks (`BATCH_STATS_CHUNK` rewards a block): sizes below,
/// at and past one block's worth and several blocks with a ragged last one, rewards far from
/// zero (a mean of ~1000 with a spread of ~1: cancellation if the variance were formed
/// naively) and with exact zeros (GPG's nonzero count), against the CPU reference. Batch
/// scaling and GPG read the statistics, so the advantages carry them too.
fn group_advantage_batch_stats_across_blocks<D: Device>(b: &CudaBackend<D>) {
    use mmr1_fast::backend::cuda::rl::advantage::BATCH_STATS_CHUNK;
    use mmr1_fast::rl::advantage::{advantages_f64, AdvEstimator, AdvantageConfig, ScaleRewards};
    let c = BATCH_STATS_CHUNK;
    let sizes = [1usize, 2, c - 1, c, c + 1, 3 * c + 77];
    for (k, &n) in sizes.iter().enumerate() {
        let mut r = rng(500 + k as u64);
        let far = k % 2 == 1;
        let rewards: Vec<f32> = (0..n)
            .map(|i| match i % 7 {
                0 => 0.0,
                _ if far => 1000.0 + r.gen_range(-1.0f32..1.0),
                _ => r.gen_range(-2.0f32..3.0),
            })
            .collect();
        // Groups of 8 with a ragged last one.
        let mut offsets: Vec<usize> = (0..n).step_by(8).collect();
        offsets.push(n);
        let r64: Vec<f64> = rewards.iter().map(|&x| x as f64).collect();
        let d_r = b.upload(&rewards);
        for (est, scale) in
            [(AdvEstimator::Grpo, ScaleRewards::Batch), (AdvEstimator::Gpg, ScaleRewards::None)]
        {
            let cfg = AdvantageConfig { estimator: est, scale, ..AdvantageConfig::trl() };
            let what = format!("n {n} {est:?}/{scale:?}");
            let (want, ws) = advantages_f64(&r64, &offsets, None, &cfg);
            let mut adv = poisoned(b, n);
            let gs = b.group_advantages(&d_r, &offsets, None, &cfg, &mut adv);
            assert_sum(&format!("{what}: reward_mean"), gs.reward_mean, ws.reward_mean);
            assert_sum(&format!("{what}: reward_std"), gs.reward_std, ws.reward_std);
            assert_eq!(gs.num_groups, ws.num_groups, "{what}: groups");
            for (i, (&g, &w)) in b.download(&adv).iter().zip(&want).enumerate() {
                let tol = 2.0 * f32::EPSILON as f64 * w.abs() + 1e-9;
                assert!(
                    g.is_finite() && ((g as f64) - w).abs() <= tol,
                    "{what}: adv {i}: {g} vs {w}"
                );
            }
            if n != sizes[sizes.len() - 1] {
                continue;
            }
            // The same call again gives the same bits (on a GPU another block may finish
            // last; the fold order is fixed all the same).
            let mut again = poisoned(b, n);
            let gs2 = b.group_advantages(&d_r, &offsets, None, &cfg, &mut again);
            assert_eq!(gs, gs2, "{what}: statistics differ between calls");
            assert_eq!(b.download(&adv), b.download(&again), "{what}: advantages differ");
        }
    }
}

// ---- VAS scores ----------------------------------------------------------------------------

/// Items with 0, 1, 2, 3, 8 and 16 rollouts; rollouts of 0..60 tokens over a small alphabet
/// (n-grams repeat within and across rollouts) or a real-sized vocabulary, with exact
/// duplicates, short rollouts (< 4 tokens) and empty ones.
fn vas_batch(seed: u64) -> (Vec<Vec<Vec<u32>>>, Vec<Vec<f32>>) {
    let mut r = rng(seed);
    let mut items = Vec::new();
    let mut correct = Vec::new();
    for (i, &k) in [0usize, 1, 2, 3, 8, 16, 8, 2, 3, 8, 5, 16].iter().enumerate() {
        let vocab = if i % 3 == 2 { 151_936 } else { 3 + i as u32 % 4 };
        let mut rolls: Vec<Vec<u32>> = Vec::new();
        for j in 0..k {
            let len = match (i + j) % 9 {
                0 => 0,
                1 => r.gen_range(1..4),
                _ => r.gen_range(4..60),
            };
            if j > 0 && (i + j) % 5 == 0 {
                let dup = rolls[j - 1].clone(); // an exact duplicate
                rolls.push(dup);
            } else {
                rolls.push((0..len).map(|_| r.gen_range(0..vocab)).collect());
            }
        }
        let c: Vec<f32> = (0..k)
            .map(|j| {
                if i % 4 == 1 {
                    [0.0, 0.5, 1.0][(j * 7 + i) % 3]
                } else {
                    r.gen_range(0..2) as f32
                }
            })
            .collect();
        items.push(rolls);
        correct.push(c);
    }
    (items, correct)
}

fn vas_scores_match_cpu<D: Device>(b: &CudaBackend<D>) {
    use mmr1_fast::backend::cuda::rl::vas_score::DeviceRollouts;
    use mmr1_fast::rl::vas::{score_item, TdsMetric};
    let (items, correct) = vas_batch(31);
    let (mut tokens, mut roll_off, mut item_off, mut corr) =
        (vec![], vec![0usize], vec![0usize], vec![]);
    for (rolls, c) in items.iter().zip(&correct) {
        for t in rolls {
            tokens.extend_from_slice(t);
            roll_off.push(tokens.len());
        }
        corr.extend_from_slice(c);
        item_off.push(roll_off.len() - 1);
    }
    let d_tok = b.upload_tokens(&tokens);
    let d_corr = b.upload(&corr);
    let dr =
        DeviceRollouts { tokens: &d_tok, rollouts: &roll_off, items: &item_off, correct: &d_corr };
    for metric in [
        TdsMetric::InverseSelfBleu { max_n: 4 },
        TdsMetric::InverseSelfBleu { max_n: 1 },
        TdsMetric::InverseSelfBleu { max_n: 2 },
        TdsMetric::DistinctN { max_n: 4 },
        TdsMetric::DistinctN { max_n: 3 },
    ] {
        let got = b.vas_scores(&dr, 0.8, 0.2, metric);
        assert_eq!(got.len(), items.len());
        let mut max_err = 0f32;
        for (i, ((rolls, c), g)) in items.iter().zip(&correct).zip(&got).enumerate() {
            let toks: Vec<&[u32]> = rolls.iter().map(|t| t.as_slice()).collect();
            let w = score_item(c, &toks, 0.8, 0.2, metric);
            let what = format!("{metric:?} item {i} ({} rollouts)", rolls.len());
            // Pass rate and OVS are the same f64 sum and f32 products: bit for bit. TDS is
            // an f64 formula of exact integer counts, rounded to f32; only the device's log
            // and exp (<= 2 ulp in f64) differ, so one f32 rounding step at most: 1e-6.
            assert_eq!(g.n, w.n, "{what}: n");
            assert_eq!(g.pass_rate.to_bits(), w.pass_rate.to_bits(), "{what}: pass rate");
            assert_eq!(g.ovs.to_bits(), w.ovs.to_bits(), "{what}: ovs");
            assert!((g.tds - w.tds).abs() <= 1e-6, "{what}: tds {} vs {}", g.tds, w.tds);
            assert!((g.vps - w.vps).abs() <= 1e-6, "{what}: vps {} vs {}", g.vps, w.vps);
            max_err = max_err.max((g.tds - w.tds).abs());
        }
        println!("ERR vas tds {metric:?}: {max_err:.3e}");
    }
    // The items' TDS must not be trivial: some 0, some strictly between 0 and 1.
    let t: Vec<f32> =
        b.vas_scores(&dr, 0.8, 0.2, TdsMetric::default()).iter().map(|s| s.tds).collect();
    assert!(t.iter().any(|&x| x > 0.05 && x < 0.95), "{t:?}");
}

// ---- the RlOps trait -----------------------------------------------------------------------

/// The trait a trainer would call gives the same results on the CPU backend (the reference
/// functions) and on the device (the kernels).
fn rl_ops_cpu_and_device_agree<D: Device>(b: &CudaBackend<D>) {
    use mmr1_fast::backend::cpu::Cpu;
    use mmr1_fast::backend::rl_ops::{RlOps, RolloutBatch};
    use mmr1_fast::rl::advantage::AdvantageConfig;
    use mmr1_fast::rl::vas::TdsMetric;
    let bt = batch(41);
    let n = bt.logp.len();
    let norm = Normalizer::count(&bt.mask, &bt.offsets, 48);
    let x = Extras::K3_ENTROPY;
    let cfg = config(PolicyLoss::Vanilla, Aggregation::TokenMean, Convention::Verl, x);
    let (mut dc, mut ec) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    let cpu = Cpu.rl_loss(
        &LossBufs {
            logp: &bt.logp,
            logp_old: &bt.old,
            advantages: AdvBuf::PerResponse(&bt.adv_resp),
            mask: &bt.mask,
            ref_logp: Some(&bt.refl),
            entropy: Some(&bt.ent),
            pg_mask: None,
            selected: None,
            offsets: &bt.offsets,
        },
        &cfg,
        norm,
        &mut dc,
        Some(&mut ec),
    );
    let up = |v: &[f32]| b.upload(v);
    let (lp, old, refl, ent, mask, adv) =
        (up(&bt.logp), up(&bt.old), up(&bt.refl), up(&bt.ent), up(&bt.mask), up(&bt.adv_resp));
    let (mut dd, mut ed) = (poisoned(b, n), poisoned(b, n));
    let dev = b.rl_loss(
        &LossBufs {
            logp: &lp,
            logp_old: &old,
            advantages: AdvBuf::PerResponse(&adv),
            mask: &mask,
            ref_logp: Some(&refl),
            entropy: Some(&ent),
            pg_mask: None,
            selected: None,
            offsets: &bt.offsets,
        },
        &cfg,
        norm,
        &mut dd,
        Some(&mut ed),
    );
    assert_sum("trait loss", dev.loss, cpu.loss);
    assert_metrics("trait", &dev.metrics, &cpu.metrics);
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    assert_grad("trait dlogp", &b.download(&dd), &f64s(&dc));
    assert_grad("trait dentropy", &b.download(&ed), &f64s(&ec));

    let (rw, off, lens) = adv_batch(42);
    let acfg = AdvantageConfig::trl();
    let mut ac = vec![f32::NAN; rw.len()];
    let sc = Cpu.rl_advantages(&rw, &off, Some(&lens), &acfg, &mut ac);
    let mut ad = poisoned(b, rw.len());
    let sd = b.rl_advantages(&b.upload(&rw), &off, Some(&lens), &acfg, &mut ad);
    assert_eq!(sd.num_zero_variance, sc.num_zero_variance);
    assert_grad("trait advantages", &b.download(&ad), &f64s(&ac));

    let (items, correct) = vas_batch(43);
    let (mut tokens, mut roll, mut it, mut corr) = (vec![], vec![0usize], vec![0usize], vec![]);
    for (rolls, c) in items.iter().zip(&correct) {
        for t in rolls {
            tokens.extend_from_slice(t);
            roll.push(tokens.len());
        }
        corr.extend_from_slice(c);
        it.push(roll.len() - 1);
    }
    let rb = RolloutBatch { tokens: &tokens, rollouts: &roll, items: &it, correct: &corr };
    let m = TdsMetric::default();
    for (g, w) in b.rl_vas_scores(&rb, 0.8, 0.2, m).iter().zip(Cpu.rl_vas_scores(&rb, 0.8, 0.2, m))
    {
        assert_eq!((g.n, g.pass_rate, g.ovs), (w.n, w.pass_rate, w.ovs));
        assert!((g.tds - w.tds).abs() <= 1e-6 && (g.vps - w.vps).abs() <= 1e-6, "{g:?} vs {w:?}");
    }
}

// ---- chunked log-probs from hidden states and lm_head ---------------------------------------

/// f64 host oracle: (lp, entropy, d hidden, d head) of softmax(inv_temp h W^T).
#[allow(clippy::type_complexity)]
fn head_oracle(
    h: &[f32],
    w: &[f32],
    tg: &[u32],
    g: &[f32],
    ge: &[f32],
    (rows, d, v): (usize, usize, usize),
    inv_temp: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut lp, mut ent, mut dh, mut dw) =
        (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows * d], vec![0.0; v * d]);
    for t in 0..rows {
        let z: Vec<f64> = (0..v)
            .map(|j| {
                inv_temp * (0..d).map(|k| h[t * d + k] as f64 * w[j * d + k] as f64).sum::<f64>()
            })
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        let p: Vec<f64> = z.iter().map(|x| (x - lse).exp()).collect();
        lp[t] = z[tg[t] as usize] - lse;
        ent[t] = -(0..v).map(|j| p[j] * (z[j] - lse)).sum::<f64>();
        for j in 0..v {
            let dz = g[t] as f64 * ((j == tg[t] as usize) as u8 as f64 - p[j])
                - ge[t] as f64 * p[j] * ((z[j] - lse) + ent[t]);
            let dl = dz * inv_temp;
            for k in 0..d {
                dh[t * d + k] += dl * w[j * d + k] as f64;
                dw[j * d + k] += dl * h[t * d + k] as f64;
            }
        }
    }
    (lp, ent, dh, dw)
}

fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|x| x.is_finite()), "non-finite output");
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    num.sqrt() / (den.sqrt() + 1e-12)
}

/// Chunked log-probs, entropies, d hidden and d lm_head equal the unchunked path (chunk =
/// rows) and an f64 oracle, at chunk sizes that do and do not divide the rows.
fn chunked_head<B: Backend>(b: &B) {
    use mmr1_fast::backend::chunked_logprob::{
        chunked_logprobs, chunked_logprobs_backward, HeadShape,
    };
    let mut r = rng(51);
    let (rows, d, v, inv_temp) = (11usize, 16usize, 37usize, 1.0f32 / 0.7);
    let mut rv = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| r.gen_range(-s..s)).collect() };
    let (h, w, g, ge) = (rv(rows * d, 1.0), rv(v * d, 0.6), rv(rows, 1.0), rv(rows, 0.5));
    let tg: Vec<u32> = (0..rows).map(|t| ((t * 13 + 5) % v) as u32).collect();
    let (olp, oent, odh, odw) = head_oracle(&h, &w, &tg, &g, &ge, (rows, d, v), inv_temp as f64);
    let dw0 = rv(v * d, 0.1); // d head accumulates onto this
    let odw: Vec<f64> = odw.iter().zip(&dw0).map(|(a, &b)| a + b as f64).collect();
    let (hb, wb, gb, geb) = (b.upload(&h), b.upload(&w), b.upload(&g), b.upload(&ge));
    let mut runs = Vec::new();
    for chunk in [rows, 1, 3, 7] {
        let s = HeadShape { rows, dim: d, vocab: v, chunk, inv_temp };
        let nan = |n: usize| b.upload(&vec![f32::NAN; n]);
        let (mut lp, mut ent, mut dh) = (nan(rows), nan(rows), nan(rows * d));
        let mut dw = b.upload(&dw0);
        chunked_logprobs(b, &mut lp, &mut ent, &hb, &wb, &tg, s);
        chunked_logprobs_backward(b, &mut dh, &mut dw, &hb, &wb, &tg, &gb, &geb, s);
        let got = [b.download(&lp), b.download(&ent), b.download(&dh), b.download(&dw)];
        // f32 GEMMs over 16-37 terms against f64: ~1e-7 relative.
        for (what, x, o) in [
            ("lp", &got[0], &olp),
            ("entropy", &got[1], &oent),
            ("dhidden", &got[2], &odh),
            ("dhead", &got[3], &odw),
        ] {
            let e = rel_l2(x, o);
            println!("ERR chunked_head {what} chunk {chunk}: {e:.3e}");
            assert!(
                e <= 1e-5,
                "{what}, chunk {chunk}: relative L2 error {e:.3e} against the f64 oracle"
            );
        }
        runs.push(got);
    }
    // Chunking changes only which rows share a GEMM (and the order d head sums its rows in).
    for (c, got) in runs.iter().enumerate().skip(1) {
        for (k, what) in ["lp", "entropy", "dhidden", "dhead"].iter().enumerate() {
            let unchunked: Vec<f64> = runs[0][k].iter().map(|&x| x as f64).collect();
            let e = rel_l2(&got[k], &unchunked);
            assert!(
                e <= 1e-6,
                "{what}: chunked run {c} differs from the unchunked path by {e:.3e}"
            );
        }
    }
}

#[test]
fn cpu_chunked_head() {
    chunked_head(&mmr1_fast::backend::cpu::Cpu);
}

backend_suite!(
    grpo_loss_every_mode,
    grpo_loss_every_kl,
    grpo_loss_split_invariant,
    grpo_loss_stream_shapes,
    grpo_loss_empty,
    group_advantages_every_mode,
    group_advantages_segment_widths,
    group_advantage_batch_stats_across_blocks,
    vas_scores_match_cpu,
    rl_ops_cpu_and_device_agree,
    chunked_head
);

/// The launches of a call, by kernel (emulator profile): a token-level loss is the streaming
/// kernel and the fold; a sequence-level one the per-response kernel and the fold; GRPO
/// advantages with group scaling are one segmented launch and its fold, batch scaling two of
/// each (the statistics first).
#[cfg(feature = "emu")]
#[test]
fn launches_per_call() {
    use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
    use mmr1_fast::backend::profile::since;
    use mmr1_fast::rl::advantage::{AdvantageConfig, ScaleRewards};
    let b =
        CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]).with_profile());
    let launches = |f: &mut dyn FnMut()| {
        let before = b.kernel_profile();
        f();
        let mut v: Vec<(String, u64)> =
            since(&before, &b.kernel_profile()).into_iter().map(|k| (k.name, k.calls)).collect();
        v.retain(|(name, _)| name != "fill_f32"); // the poisoned outputs of the test itself
        v.sort();
        v
    };
    let named = |v: &[(&str, u64)]| v.iter().map(|(n, c)| (n.to_string(), *c)).collect::<Vec<_>>();
    let bt = batch_of(&mut rng(15), &[9; 6]);
    let x = Extras::K3_ENTROPY;
    let norm = Normalizer::count(&bt.mask, &bt.offsets, 9);
    let rows = bt.offsets.len() - 1;
    let token_level = config(PolicyLoss::Vanilla, Aggregation::TokenMean, Convention::Mmr1, x);
    assert_eq!(
        launches(&mut || {
            device_loss(&b, &bt, 0..rows, &token_level, norm, x);
        }),
        named(&[("grpo_loss_stream_f32", 1), ("reduce_rows_f64", 1)])
    );
    let seq_level = config(PolicyLoss::Gspo, Aggregation::TokenMean, Convention::Verl, x);
    assert_eq!(
        launches(&mut || {
            device_loss(&b, &bt, 0..rows, &seq_level, norm, x);
        }),
        named(&[("grpo_loss_f32", 1), ("reduce_rows_f64", 1)])
    );
    let rw: Vec<f32> = (0..64).map(|i| (i % 3) as f32).collect();
    let d_rw = b.upload(&rw);
    let offsets: Vec<usize> = (0..=8).map(|g| 8 * g).collect();
    let mut adv = b.zeros(rw.len());
    for (scale, passes) in [(ScaleRewards::Group, 1), (ScaleRewards::Batch, 2)] {
        let cfg = AdvantageConfig { scale, ..AdvantageConfig::verl() };
        assert_eq!(
            launches(&mut || {
                b.group_advantages(&d_rw, &offsets, None, &cfg, &mut adv);
            }),
            named(&[("adv_fold_f64", passes), ("group_adv_seg_f32", passes)]),
            "{scale:?}"
        );
    }
}
