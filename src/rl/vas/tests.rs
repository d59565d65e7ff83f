//! Tests of Variance-Aware Sampling: scores, diversity, and the sampler's distribution.

use super::*;
use rand::SeedableRng;

const BLEU: TdsMetric = TdsMetric::InverseSelfBleu { max_n: 4 };
const DIST: TdsMetric = TdsMetric::DistinctN { max_n: 4 };

#[test]
fn ovs_shape() {
    assert_eq!(ovs(0.0), 0.0);
    assert_eq!(ovs(1.0), 0.0);
    assert_eq!(ovs(0.5), 0.25);
    for i in 0..=100 {
        let p = i as f32 / 100.0;
        assert!(ovs(p) <= ovs(0.5));
        assert!(ovs(p) >= 0.0);
    }
    assert_eq!(pass_rate(&[1.0, 0.0, 1.0, 1.0]), 0.75);
    assert_eq!(pass_rate(&[]), 0.0);
    assert!((vps(0.25, 0.5, 0.8, 0.2) - 0.3).abs() < 1e-7);
}

#[test]
fn tds_identical_disjoint_and_hand_computed() {
    let a: &[u32] = &[5, 6, 7, 8, 9, 10, 11];
    for m in [BLEU, DIST] {
        assert_eq!(tds_with(&[a, a, a], m), 0.0, "{m:?}");
        // Disjoint 6-token rollouts: fully diverse (the padded reference code reports
        // self-BLEU 0.905 here when padded to 64).
        let (x, y): (&[u32], &[u32]) = (&[1, 2, 3, 4, 5, 6], &[7, 8, 9, 10, 11, 12]);
        assert_eq!(tds_with(&[x, y], m), 1.0, "{m:?}");
        assert_eq!(tds_with(&[a], m), 0.0);
        assert_eq!(tds_with(&[], m), 0.0);
    }
    // [1,2,3,4] vs [1,2,3,5] (symmetric): p1 = 3/4, p2 = (2+1)/(3+1), p3 = (1+1)/(2+1),
    // p4 = (0+1)/(1+1), BP = 1: BLEU = (0.1875)^(1/4) = 0.658037006476, TDS = 0.341962993524.
    let (x, y): (&[u32], &[u32]) = (&[1, 2, 3, 4], &[1, 2, 3, 5]);
    assert!((tds_with(&[x, y], BLEU) as f64 - 0.341962993524).abs() < 1e-6);
    // `tds` is the default metric, 1 - self-BLEU-4 (MMR1.md: TDS = inverse self-BLEU).
    assert!((tds(&[x, y]) as f64 - 0.341962993524).abs() < 1e-6);
    // distinct-n: n=1: U=5, D=[4,4] -> (5-4)/(8-4) = 1/4; n=2: U=4, D=[3,3] -> 1/3;
    // n=3: U=3, D=[2,2] -> 1/2; n=4: U=2, D=[1,1] -> 1. Mean = 25/48.
    assert!((tds_with(&[x, y], DIST) as f64 - 25.0 / 48.0).abs() < 1e-6);
    // Brevity penalty: a strict prefix is penalised, [1,2] vs [1,2,3,4]:
    // hyp [1,2]: p = 1, (1+1)/(1+1), (0+1)/(1+1), (0+1)/(1+1) (nltk's n-gram denominators are
    // at least 1) -> BLEU = exp(1 - 4/2) * (1/4)^(1/4);
    // hyp [1,2,3,4]: p1 = 2/4, p2 = (1+1)/(3+1), p3 = 1/3, p4 = 1/2, BP 1.
    let (x, y): (&[u32], &[u32]) = (&[1, 2], &[1, 2, 3, 4]);
    let b2 = (0.5f64 * 0.5 * (1.0 / 3.0) * 0.5).powf(0.25);
    let want = 1.0 - ((-1f64).exp() * 0.25f64.powf(0.25) + b2) / 2.0;
    assert!((tds_with(&[x, y], BLEU) as f64 - want).abs() < 1e-6);
}

/// The brevity penalty takes the reference length closest to the hypothesis (nltk
/// `closest_ref_length`), not the shortest, and penalises a hypothesis shorter than it.
/// Rollouts a = [1,2,3,4], b = [1], c = [1,2,3,5,6]; value checked with nltk 3.9.1
/// `sentence_bleu(..., weights=(0.25,)*4, smoothing_function=SmoothingFunction().method2)`
/// against the other two rollouts, averaged: 1 - self-BLEU = 0.6543311652377548.
///   a: closest of {1, 5} to 4 is 5: BP e^(1 - 5/4); p = 3/4, 3/4, 2/3, 1/2.
///   b: closest of {4, 5} to 1 is 4: BP e^(1 - 4); p = 1, 1/2, 1/2, 1/2 (denominators >= 1).
///   c: closest of {4, 1} to 5 is 4: BP 1; p = 3/5, 3/5, 2/4, 1/3.
#[test]
fn brevity_penalty_uses_the_closest_reference_length() {
    let (a, b, c): (&[u32], &[u32], &[u32]) = (&[1, 2, 3, 4], &[1], &[1, 2, 3, 5, 6]);
    let bleu_a = (-0.25f64).exp() * (0.75f64 * 0.75 * (2.0 / 3.0) * 0.5).powf(0.25);
    let bleu_b = (-3f64).exp() * 0.125f64.powf(0.25);
    let bleu_c = (0.6f64 * 0.6 * 0.5 * (1.0 / 3.0)).powf(0.25);
    let want = 1.0 - (bleu_a + bleu_b + bleu_c) / 3.0;
    assert!((want - 0.6543311652377548).abs() < 1e-12, "hand value {want} vs nltk");
    assert!((tds_with(&[a, b, c], BLEU) as f64 - want).abs() < 1e-6);
}

#[test]
fn tds_monotone_as_rollouts_diverge() {
    // 4 copies of a 40-token sequence over a small vocabulary (so n-grams repeat); step s
    // replaces position s of rollouts 1..3 with tokens unique to that rollout.
    let base: Vec<u32> = (0..40u32).map(|i| (i * 7 + i / 3) % 11).collect();
    let mut rolls = vec![base.clone(); 4];
    let score = |r: &Vec<Vec<u32>>, m| {
        let s: Vec<&[u32]> = r.iter().map(|v| v.as_slice()).collect();
        tds_with(&s, m)
    };
    let mut prev_b = score(&rolls, BLEU);
    let mut prev_d = score(&rolls, DIST);
    assert_eq!(prev_b, 0.0);
    assert_eq!(prev_d, 0.0);
    for s in 0..40 {
        for (r, roll) in rolls.iter_mut().enumerate().skip(1) {
            roll[s] = 1000 + 100 * r as u32 + s as u32;
        }
        let b = score(&rolls, BLEU);
        let d = score(&rolls, DIST);
        assert!(b > prev_b, "self-BLEU TDS not increasing at step {s}: {prev_b} -> {b}");
        assert!(d >= prev_d, "distinct-n TDS decreased at step {s}: {prev_d} -> {d}");
        assert!((0.0..=1.0).contains(&b) && (0.0..=1.0).contains(&d));
        prev_b = b;
        prev_d = d;
    }
    assert!(prev_b > 0.9 && prev_d > 0.9, "{prev_b} {prev_d}");
}

#[test]
fn tds_bounded_on_random_rollouts() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..300 {
        let k = rng.gen_range(2..7);
        let vocab = rng.gen_range(1..6u32);
        let rolls: Vec<Vec<u32>> = (0..k)
            .map(|_| (0..rng.gen_range(0..30)).map(|_| rng.gen_range(0..vocab)).collect())
            .collect();
        let s: Vec<&[u32]> = rolls.iter().map(|v| v.as_slice()).collect();
        for m in [BLEU, DIST, TdsMetric::InverseSelfBleu { max_n: 2 }] {
            let t = tds_with(&s, m);
            assert!((0.0..=1.0).contains(&t) && t.is_finite(), "{t} for {rolls:?}");
        }
    }
    // Empty rollouts: nltk scores an empty hypothesis 0 (brevity penalty 0), even against an
    // empty reference.
    let e: &[u32] = &[];
    let x: &[u32] = &[1, 2];
    assert_eq!(tds_with(&[e, e], BLEU), 1.0);
    assert_eq!(tds_with(&[e, x], BLEU), 1.0);
}

#[test]
fn score_item_is_what_refresh_stores() {
    let (a, b): (&[u32], &[u32]) = (&[1, 2, 3], &[7, 8, 9, 10]);
    let s = score_item(&[1.0, 0.0, 1.0], &[a, b, a], 0.8, 0.2, BLEU);
    assert_eq!(s.n, 3);
    assert!((s.pass_rate - 2.0 / 3.0).abs() < 1e-6);
    assert!((s.ovs - 2.0 / 9.0).abs() < 1e-6);
    assert!(s.tds > 0.0 && s.tds < 1.0, "two of three identical: {}", s.tds);
    assert_eq!(s.vps, vps(s.ovs, s.tds, 0.8, 0.2));
    let mut t = VpsTable::new(1);
    t.refresh(0, &[1.0, 0.0, 1.0], &[a, b, a], 3);
    let it = t.item(0);
    assert_eq!(
        (it.pass_rate, it.ovs, it.tds, it.vps, it.num_rollouts),
        (s.pass_rate, s.ovs, s.tds, Some(s.vps), 3)
    );
}

#[test]
fn refresh_and_serde_roundtrip() {
    let mut t = VpsTable::new(3);
    assert_eq!(t.num_scored(), 0);
    assert!((t.prior_score() - 0.4).abs() < 1e-7); // 0.8 * 0.25 + 0.2 * 1
    let (a, b): (&[u32], &[u32]) = (&[1, 2, 3, 4], &[5, 6, 7, 8]);
    t.refresh(1, &[1.0, 0.0, 0.0, 1.0], &[a, b, a, b], 17);
    let it = *t.item(1);
    assert_eq!(it.pass_rate, 0.5);
    assert_eq!(it.ovs, 0.25);
    // self-BLEU: each rollout has an identical copy among the others -> BLEU 1 -> TDS 0
    assert_eq!(it.tds, 0.0);
    assert_eq!(it.vps, Some(0.2));
    assert_eq!((it.last_step, it.num_rollouts), (17, 4));
    assert_eq!(t.weights(), vec![0.4, 0.2, 0.4]);
    t.prior = UnscoredPrior::MeanScored;
    assert_eq!(t.weights(), vec![0.2, 0.2, 0.2]);
    let json = serde_json::to_string(&t).unwrap();
    let back: VpsTable = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
}

#[test]
fn table_accessors_count_and_mean_prior() {
    let mut t = VpsTable::new(3);
    assert!(!t.is_empty() && VpsTable::new(0).is_empty());
    assert_eq!((t.len(), t.items().len()), (3, 3));
    // Item 0: pass rate 1/4, OVS 3/16, identical rollouts (TDS 0): VPS 0.8 * 3/16 = 0.15.
    // Item 2: pass rate 1/2, OVS 1/4, disjoint rollouts (TDS 1): VPS 0.2 + 0.2 = 0.4.
    let (a, b): (&[u32], &[u32]) = (&[1, 2, 3, 4], &[5, 6, 7, 8]);
    t.refresh(0, &[1.0, 0.0, 0.0, 0.0], &[a, a, a, a], 2);
    t.refresh(2, &[1.0, 0.0], &[a, b], 3);
    assert_eq!(t.num_scored(), 2);
    assert_eq!(t.items()[2], *t.item(2));
    assert!((t.item(0).vps.unwrap() - 0.15).abs() < 1e-7);
    assert!((t.item(2).vps.unwrap() - 0.4).abs() < 1e-7);
    // The neutral prior is the mean of the scored VPS, (0.15 + 0.4) / 2.
    t.prior = UnscoredPrior::MeanScored;
    assert!((t.prior_score() - 0.275).abs() < 1e-7, "{}", t.prior_score());
    t.prior = UnscoredPrior::Fixed(0.7);
    assert_eq!(t.weights()[1], 0.7);
}

/// Non-finite and negative scores count as weight 0 (never drawn by the weighted part); with
/// replacement (the reference code's sampler) a batch may be larger than the table, without
/// replacement it may not.
#[test]
fn bad_weights_are_zero_and_batch_size_limits() {
    let table = table_with(&[1.0, f32::INFINITY, -1.0, f32::NAN, 1.0, f32::NEG_INFINITY]);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for _ in 0..200 {
        let p = VasSampler::new(1.0).sample_batch_parts(&table, 3, &mut rng);
        let mut w = p.weighted.clone();
        w.sort();
        assert_eq!(w, vec![0, 4], "only the two finite positive weights are drawn");
        assert_eq!(p.uniform.len(), 1);
    }
    let s = VasSampler { with_replacement: true, ..VasSampler::new(0.5) };
    let small = table_with(&[0.1, 0.2, 0.3]);
    let b = s.sample_batch(&small, 10, &mut rng);
    assert_eq!(b.len(), 10);
    assert!(b.iter().all(|&i| i < 3));
    let r = std::panic::catch_unwind(|| {
        VasSampler::new(0.5).sample_batch(&small, 4, &mut ChaCha8Rng::seed_from_u64(1))
    });
    assert!(r.is_err(), "4 distinct items out of 3");
}

fn table_with(weights: &[f32]) -> VpsTable {
    let mut t = VpsTable::new(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        t.items[i].vps = Some(w);
    }
    t
}

/// Pearson chi-square statistic.
fn chi2(observed: &[f64], expected: &[f64]) -> f64 {
    observed.iter().zip(expected).map(|(o, e)| (o - e) * (o - e) / e).sum()
}

// Upper 0.1% points of the chi-square distribution.
const CHI2_999_DF6: f64 = 22.458;
const CHI2_999_DF7: f64 = 24.322;

const W: [f32; 8] = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.0];

fn probs() -> Vec<f64> {
    let s: f64 = W.iter().map(|&w| w as f64).sum();
    W.iter().map(|&w| w as f64 / s).collect()
}

#[test]
fn first_weighted_draw_is_proportional_to_vps() {
    let table = table_with(&W);
    let s = VasSampler::new(0.5);
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let trials = 20_000;
    let mut counts = [0f64; 8];
    for _ in 0..trials {
        let p = s.sample_batch_parts(&table, 6, &mut rng);
        assert_eq!(p.weighted.len(), 3);
        assert!(!p.weighted.contains(&7), "zero-weight item drawn by the weighted part");
        counts[p.weighted[0]] += 1.0;
    }
    let p = probs();
    let exp: Vec<f64> = p[..7].iter().map(|q| q * trials as f64).collect();
    let c = chi2(&counts[..7], &exp);
    assert!(c < CHI2_999_DF6, "chi2 {c}, counts {counts:?}");
}

#[test]
fn weighted_inclusion_without_replacement_matches_theory() {
    // lambda = 1, B = 2: two successive draws without replacement. Inclusion probability
    // P(i) = p_i + sum_{j != i} p_j p_i / (1 - p_j).
    let table = table_with(&W);
    let s = VasSampler::new(1.0);
    let p = probs();
    let incl: Vec<f64> = (0..8)
        .map(|i| p[i] + (0..8).filter(|&j| j != i).map(|j| p[j] * p[i] / (1.0 - p[j])).sum::<f64>())
        .collect();
    assert!((incl.iter().sum::<f64>() - 2.0).abs() < 1e-12);
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let trials = 20_000;
    let mut counts = [0f64; 8];
    for _ in 0..trials {
        let b = s.sample_batch(&table, 2, &mut rng);
        assert_ne!(b[0], b[1]);
        for i in b {
            counts[i] += 1.0;
        }
    }
    assert_eq!(counts[7], 0.0);
    let exp: Vec<f64> = incl[..7].iter().map(|q| q * trials as f64).collect();
    let c = chi2(&counts[..7], &exp);
    assert!(c < CHI2_999_DF6, "chi2 {c}, counts {counts:?}, expected {exp:?}");
}

/// Four successive weighted draws without replacement out of five items: the item left out is
/// the last of a full successive draw, P(j last) = sum over the orders ending in j of
/// prod_k w_(k) / (weight not yet drawn), enumerated here over all 120 orders (successive
/// sampling, the distribution `VasSampler`'s doc promises).
#[test]
fn largest_keys_with_one_item_left_out() {
    let w = [0.1f64, 0.2, 0.3, 0.4, 0.5];
    let mut p_last = [0f64; 5];
    // Every order of the five items: the 120 permutations among the 5^5 index tuples.
    for code in 0..5usize.pow(5) {
        let a: Vec<usize> = (0..5).map(|k| code / 5usize.pow(k) % 5).collect();
        if (0..5).any(|i| !a.contains(&i)) {
            continue;
        }
        let (mut left, mut p) = (w.iter().sum::<f64>(), 1.0);
        for &i in &a {
            p *= w[i] / left;
            left -= w[i];
        }
        p_last[a[4]] += p;
    }
    assert!((p_last.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    let table = table_with(&w.map(|x| x as f32));
    let s = VasSampler::new(1.0);
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let trials = 20_000;
    let mut counts = [0f64; 5];
    for _ in 0..trials {
        let p = s.sample_batch_parts(&table, 4, &mut rng);
        assert_eq!(p.weighted.len(), 4);
        let left: Vec<usize> = (0..5).filter(|i| !p.weighted.contains(i)).collect();
        assert_eq!(left.len(), 1, "four distinct items: {:?}", p.weighted);
        counts[left[0]] += 1.0;
    }
    let exp: Vec<f64> = p_last.iter().map(|q| q * trials as f64).collect();
    let c = chi2(&counts, &exp);
    assert!(c < 18.467, "chi2 {c} (df 4, 0.1%), counts {counts:?}, expected {exp:?}");
}

#[test]
fn with_replacement_frequencies_match_vps() {
    let table = table_with(&W);
    let s = VasSampler { with_replacement: true, ..VasSampler::new(1.0) };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (trials, b) = (5_000, 4);
    let mut counts = [0f64; 8];
    for _ in 0..trials {
        for i in s.sample_batch(&table, b, &mut rng) {
            counts[i] += 1.0;
        }
    }
    let exp: Vec<f64> = probs()[..7].iter().map(|q| q * (trials * b) as f64).collect();
    let c = chi2(&counts[..7], &exp);
    assert!(c < CHI2_999_DF6, "chi2 {c}");
    assert_eq!(counts[7], 0.0);
}

#[test]
fn lambda_zero_is_exactly_uniform() {
    let s = VasSampler::new(0.0);
    assert_eq!(s.num_weighted(1000), 0);
    let t1 = table_with(&W);
    let t2 = table_with(&[9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    let mut r1 = ChaCha8Rng::seed_from_u64(8);
    let mut r2 = ChaCha8Rng::seed_from_u64(8);
    let trials = 20_000;
    let b = 3;
    let mut counts = [0f64; 8];
    for _ in 0..trials {
        let p1 = s.sample_batch_parts(&t1, b, &mut r1);
        let p2 = s.sample_batch_parts(&t2, b, &mut r2);
        // Structural: no weighted draw, and the weights have no influence at all.
        assert!(p1.weighted.is_empty());
        assert_eq!(p1, p2);
        let mut u = p1.uniform.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), b);
        for i in p1.uniform {
            counts[i] += 1.0;
        }
    }
    let exp = vec![(trials * b) as f64 / 8.0; 8];
    let c = chi2(&counts, &exp);
    assert!(c < CHI2_999_DF7, "chi2 {c}, counts {counts:?}");
}

#[test]
fn zero_weight_items_reachable_and_all_zero_fallback() {
    let table = table_with(&W);
    let s = VasSampler::new(0.5);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut seen_zero = 0;
    for _ in 0..2000 {
        let p = s.sample_batch_parts(&table, 4, &mut rng);
        assert!(!p.weighted.contains(&7));
        seen_zero += p.uniform.contains(&7) as usize;
        let mut all = p.weighted.clone();
        all.extend(&p.uniform);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4, "duplicate in a without-replacement batch");
    }
    assert!(seen_zero > 100, "zero-weight item drawn only {seen_zero} times");

    // All weights 0: the weighted part falls back to uniform draws.
    let zero = table_with(&[0.0; 8]);
    let mut counts = [0f64; 8];
    for _ in 0..8000 {
        let p = s.sample_batch_parts(&zero, 4, &mut rng);
        assert_eq!(p.weighted.len(), 2);
        for i in p.weighted {
            counts[i] += 1.0;
        }
    }
    let c = chi2(&counts, &[2000.0; 8]);
    assert!(c < CHI2_999_DF7, "chi2 {c}");

    // Fewer positive weights than weighted draws: the uniform part fills the batch.
    let sparse = table_with(&[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let p = VasSampler::new(1.0).sample_batch_parts(&sparse, 5, &mut rng);
    assert_eq!(p.weighted, vec![2]);
    assert_eq!(p.uniform.len(), 4);
    assert!(!p.uniform.contains(&2));
}

#[test]
fn counts_rounding_and_reference_compat() {
    assert_eq!(VasSampler::new(0.5).num_weighted(5), 3);
    assert_eq!(VasSampler::new(0.5).num_weighted(6), 3);
    assert_eq!(VasSampler::reference_compat(0.5).num_weighted(5), 2);
    assert_eq!(VasSampler::new(1.0).num_weighted(7), 7);
    assert_eq!(VasSampler::new(0.8).num_weighted(512), 410); // 409.6
    assert_eq!(VasSampler::reference_compat(0.8).num_weighted(512), 409);
    // Min-max: the lowest-weight item gets weight 0 in the weighted part.
    let table = table_with(&[0.1, 0.2, 0.3, 0.4]);
    let s = VasSampler { lambda: 1.0, ..VasSampler::reference_compat(1.0) };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for _ in 0..500 {
        assert!(!s.sample_batch(&table, 4, &mut rng).contains(&0));
    }
}

/// The reference code's min-max normalisation, `(w - min) / (max - min + 1e-8)`, at its edges:
/// a zero minimum (still weight 0: the other items keep weights 1/3, 2/3, 1), a spread far
/// below the 1e-8 (the larger item still gets the only positive weight), and equal or all-zero
/// weights (all 0 after normalising: the uniform fallback, no 0/0).
#[test]
fn minmax_normalisation_edges() {
    let s = VasSampler::reference_compat(1.0);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let zero_min = table_with(&[0.0, 0.1, 0.2, 0.3]);
    let mut counts = [0f64; 4];
    for _ in 0..6000 {
        for i in s.sample_batch(&zero_min, 1, &mut rng) {
            counts[i] += 1.0;
        }
    }
    assert_eq!(counts[0], 0.0, "the minimum is never drawn");
    let c = chi2(&counts[1..], &[1000.0, 2000.0, 3000.0]);
    assert!(c < 13.816, "chi2 {c} (df 2, 0.1%), counts {counts:?}");
    let tiny = table_with(&[0.0, 1e-10]);
    for _ in 0..50 {
        assert_eq!(s.sample_batch(&tiny, 1, &mut rng), vec![1]);
    }
    let equal = table_with(&[0.3; 4]);
    let mut counts = [0f64; 4];
    for _ in 0..4000 {
        for i in s.sample_batch(&equal, 1, &mut rng) {
            counts[i] += 1.0;
        }
    }
    let c = chi2(&counts, &[1000.0; 4]);
    assert!(c < 16.266, "chi2 {c} (df 3, 0.1%), counts {counts:?}");
    // All weights 0 (max 0): still 0 / 1e-8 = 0, then the uniform fallback.
    let zero = table_with(&[0.0; 4]);
    let mut counts = [0f64; 4];
    for _ in 0..4000 {
        for i in s.sample_batch(&zero, 1, &mut rng) {
            counts[i] += 1.0;
        }
    }
    let c = chi2(&counts, &[1000.0; 4]);
    assert!(c < 16.266, "chi2 {c} (df 3, 0.1%), counts {counts:?}");
}

#[test]
fn deterministic_with_seed_and_after_resume() {
    let mut table = VpsTable::new(50);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for i in (0..50).step_by(3) {
        let c: Vec<f32> = (0..8).map(|_| rng.gen_range(0..2) as f32).collect();
        let r1: Vec<u32> = (0..10).map(|_| rng.gen_range(0..20)).collect();
        let r2: Vec<u32> = (0..12).map(|_| rng.gen_range(0..20)).collect();
        table.refresh(i, &c, &[&r1, &r2], 1);
    }
    let s = VasSampler::default();
    let a = s.sample_batch(&table, 16, &mut ChaCha8Rng::seed_from_u64(77));
    let b = s.sample_batch(&table, 16, &mut ChaCha8Rng::seed_from_u64(77));
    assert_eq!(a, b);
    let resumed: VpsTable = serde_json::from_str(&serde_json::to_string(&table).unwrap()).unwrap();
    let c = s.sample_batch(&resumed, 16, &mut ChaCha8Rng::seed_from_u64(77));
    assert_eq!(a, c);
    let d = s.sample_batch(&table, 16, &mut ChaCha8Rng::seed_from_u64(78));
    assert_ne!(a, d);
    // The RNG state itself is serialisable (rand_chacha serde1) for exact resume.
    let mut r = ChaCha8Rng::seed_from_u64(5);
    let _ = s.sample_batch(&table, 16, &mut r);
    let mut r2: ChaCha8Rng = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(s.sample_batch(&table, 16, &mut r), s.sample_batch(&table, 16, &mut r2));
}
