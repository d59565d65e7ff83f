//! The sampling kernel (`kernels/sample.cu`, `CudaBackend::sample_tokens_into`, `RlOps::rl_sample`)
//! against the CPU sampler (`rl::sampling::sample_row` through `RlOps::rl_sample` on `Cpu`):
//! identical logits and draws must give identical token ids and log-probs. Random logits
//! (never zero) over odd vocabulary sizes around the 256-lane shape, many rows with their own
//! (seed, sequence, step), every mix of temperature / top-k / top-p, greedy, near-ties
//! (duplicates, 1-ulp neighbours, -0 and +0, masked -inf tokens), rows that cannot be sampled,
//! outputs poisoned with NaN before the launch.
//!
//! On the emulator (every launch under each CI schedule) the f64 arithmetic is the host's, so
//! ids and log-probs must be bit-identical. On a GPU (#[ignore]d, scripts/gpu-check.sh) the
//! device's exp/log may differ from the host's in the last bit of an f64: ids must still be
//! identical (a different id needs the uniform within ~1e-16 of a CDF boundary) and log-probs
//! within 1 f32 ulp.
#![cfg(any(feature = "emu", feature = "cuda"))]

use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::cuda::device::Device;
use mmr1_fast::backend::cuda::rl::sample::ThresholdSearch;
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::rl_ops::RlOps;
use mmr1_fast::backend::Backend;
use mmr1_fast::rl::sampling::{RowDraw, SampleRule, INVALID_TOKEN};
use rand::Rng;

use crate::kernel_check;
use kernel_check::*;

/// Rows of random logits with near-ties planted: row r % 6 == 1 duplicates values, == 2 has
/// 1-ulp neighbours of its maximum, == 3 holds -0 and +0 at the top of a negative row, == 4
/// masks a third of the tokens with -inf, == 5 is sharply peaked (a few tokens hold the mass).
fn logits(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let mut out = Vec::with_capacity(rows * vocab);
    for row in 0..rows {
        let mut x = rand_vec(&mut r, vocab, 3.0);
        match row % 6 {
            1 => {
                for i in 0..vocab {
                    x[i] = x[r.gen_range(0..vocab)].max(x[i]).min(x[(i * 7) % vocab]);
                }
            }
            2 => {
                let mx = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                for i in (0..vocab).step_by(3) {
                    x[i] = f32::from_bits(mx.to_bits() - (i % 3) as u32 - r.gen_range(0..2));
                }
            }
            3 => {
                for v in x.iter_mut() {
                    *v = -v.abs();
                }
                x[vocab / 2] = 0.0;
                x[vocab - 1] = -0.0;
                x[vocab / 3] = -0.0;
            }
            4 if vocab > 1 => {
                for i in (0..vocab).filter(|i| i % 3 == row % 3) {
                    x[i] = f32::NEG_INFINITY;
                }
            }
            5 => {
                for i in 0..vocab.min(3) {
                    let j = r.gen_range(0..vocab);
                    x[j] = 12.0 + i as f32;
                }
            }
            _ => {}
        }
        out.extend(x);
    }
    out
}

fn draws(rows: usize, seed: u64) -> Vec<RowDraw> {
    let mut r = rng(seed ^ 0xd5a);
    (0..rows)
        .map(|i| RowDraw {
            seed: if i % 4 == 0 { seed } else { r.gen() },
            seq: if i % 3 == 0 { i as u64 } else { r.gen() },
            step: r.gen_range(0..5000),
        })
        .collect()
}

fn on_emulator<D: Device>(b: &CudaBackend<D>) -> bool {
    b.device().name().starts_with("cuda-emu")
}

/// The device's (id, log-prob) per row, from outputs poisoned with NaN.
fn device_sample<D: Device>(
    b: &CudaBackend<D>,
    x: &[f32],
    vocab: usize,
    d: &[RowDraw],
    rule: &SampleRule,
) -> Vec<(u32, f32)> {
    device_sample_with(b, x, vocab, d, rule, ThresholdSearch::Radix)
}

/// [`device_sample`] with a chosen top-k / top-p threshold search.
fn device_sample_with<D: Device>(
    b: &CudaBackend<D>,
    x: &[f32],
    vocab: usize,
    d: &[RowDraw],
    rule: &SampleRule,
    search: ThresholdSearch,
) -> Vec<(u32, f32)> {
    let lg = b.upload(x);
    let (mut tok, mut lp) = (poisoned(b, d.len()), poisoned(b, d.len()));
    b.sample_tokens_into_with(&lg, vocab, d, rule, &mut tok, &mut lp, search);
    let ids = b.download(&tok).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    ids.into_iter().zip(b.download(&lp)).collect()
}

fn assert_same<D: Device>(b: &CudaBackend<D>, got: &[(u32, f32)], want: &[(u32, f32)], ctx: &str) {
    let exact = on_emulator(b);
    assert_eq!(got.len(), want.len());
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.0, w.0,
            "{ctx}, row {r}: device drew {} (log-prob {}), cpu {} ({})",
            g.0, g.1, w.0, w.1
        );
        if w.0 == INVALID_TOKEN {
            assert!(g.1.is_nan() && w.1.is_nan(), "{ctx}, row {r}: unsampleable row's log-prob");
            continue;
        }
        assert!(w.1.is_finite() && w.1 <= 0.0, "{ctx}, row {r}: cpu log-prob {}", w.1);
        let ulps = (g.1.to_bits() as i64 - w.1.to_bits() as i64).abs();
        assert!(
            if exact { ulps == 0 } else { ulps <= 1 },
            "{ctx}, row {r}: token {} log-prob device {} cpu {} ({ulps} ulp)",
            g.0,
            g.1,
            w.1
        );
    }
}

const RULES: [(f32, usize, f32); 12] = [
    (0.0, 0, 1.0),        // greedy
    (1.0, 0, 1.0),        // plain softmax, no truncation
    (0.6, 0, 1.0),        // MMR1's rollout temperature
    (1.7, 0, 0.9),        // nucleus
    (0.8, 0, 0.35),       // tight nucleus
    (1.0, 0, 1e-6),       // nucleus of one token
    (1.0, 1, 1.0),        // top-1
    (0.9, 5, 1.0),        // top-k
    (1.3, 40, 0.8),       // top-k then top-p
    (1.0, 3, 0.999),      // top-k with a nucleus that rarely bites
    (2.5, 100_000, 0.97), // k beyond the vocabulary
    (0.05, 0, 0.6),       // nearly greedy
];

/// Every threshold search: the radix select, the same deciding every mass by exact passes,
/// and the bisection baseline.
const SEARCHES: [ThresholdSearch; 3] =
    [ThresholdSearch::Radix, ThresholdSearch::RadixExact, ThresholdSearch::Bisect];

fn sample_matches_cpu<D: Device>(b: &CudaBackend<D>) {
    // Odd sizes around the lane count (256) and past several lane rounds.
    for (c, &vocab) in [1usize, 2, 7, 255, 256, 257, 600, 1031].iter().enumerate() {
        // Rows cycle through the six near-tie kinds of `logits` at least once.
        let rows = if vocab > 300 { 7 } else { 13 };
        let x = logits(rows, vocab, 100 + c as u64);
        let d = draws(rows, 7 + c as u64);
        let host = x.clone();
        for (j, &(temperature, top_k, top_p)) in RULES.iter().enumerate() {
            let rule = SampleRule { temperature, top_k, top_p };
            let want = Cpu.rl_sample(&host, vocab, &d, &rule);
            let ctx = format!("vocab {vocab}, T {temperature}, top_k {top_k}, top_p {top_p}");
            // The radix search everywhere; the exact-mass radix and the bisection on
            // alternate cases (the emulator's time).
            for search in [SEARCHES[0], SEARCHES[1 + (c + j) % 2]] {
                let got = device_sample_with(b, &x, vocab, &d, &rule, search);
                assert_same(b, &got, &want, &format!("{ctx}, {search:?}"));
            }
            if j == (c % RULES.len()) {
                // Through the trait too (fresh output buffers).
                let lg = b.upload(&x);
                let via = b.rl_sample(&lg, vocab, &d, &rule);
                assert_same(b, &via, &want, &format!("{ctx}, RlOps"));
            }
        }
    }
}

fn greedy_takes_the_first_maximum_and_sampling_varies_with_the_draw<D: Device>(b: &CudaBackend<D>) {
    let vocab = 517;
    let rows = 16;
    let mut x = logits(rows, vocab, 5);
    for r in 0..rows {
        // Ties for the maximum at r + 3, 300 and 516: greedy takes the first.
        for i in [r + 3, 300, 516] {
            x[r * vocab + i] = 20.0;
        }
    }
    let d = draws(rows, 1);
    let greedy = SampleRule { temperature: 0.0, top_k: 0, top_p: 1.0 };
    for (r, (t, lp)) in device_sample(b, &x, vocab, &d, &greedy).iter().enumerate() {
        assert_eq!(*t as usize, r + 3, "row {r}: greedy must take the first maximum");
        assert!(*lp < -0.5 && *lp > -1.5, "row {r}: three tied tokens hold ~1/3 each: {lp}");
    }
    // The check has power: the same logits with other draws give other tokens.
    let flat = logits(rows, vocab, 6);
    let rule = SampleRule { temperature: 1.5, top_k: 0, top_p: 0.95 };
    let a = device_sample(b, &flat, vocab, &d, &rule);
    let other: Vec<RowDraw> = d.iter().map(|r| RowDraw { step: r.step + 1, ..*r }).collect();
    let c = device_sample(b, &flat, vocab, &other, &rule);
    let differ = a.iter().zip(&c).filter(|(p, q)| p.0 != q.0).count();
    assert!(differ >= rows / 2, "only {differ} of {rows} rows changed with the step");
}

fn unsampleable_rows_are_flagged<D: Device>(b: &CudaBackend<D>) {
    let vocab = 301;
    let rows = 5;
    let mut x = logits(rows, vocab, 9);
    x[17] = f32::NAN; // row 0
    x[vocab + 300] = f32::INFINITY; // row 1
    for v in &mut x[2 * vocab..3 * vocab] {
        *v = f32::NEG_INFINITY; // row 2
    }
    x[3 * vocab + 5] = f32::NEG_INFINITY; // row 3: one masked token is fine
    let d = draws(rows, 2);
    for rule in [
        SampleRule { temperature: 0.0, top_k: 0, top_p: 1.0 },
        SampleRule { temperature: 0.7, top_k: 9, top_p: 0.9 },
    ] {
        let want = Cpu.rl_sample(&x, vocab, &d, &rule);
        assert_eq!(
            want.iter().map(|w| w.0 == INVALID_TOKEN).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert_same(b, &device_sample(b, &x, vocab, &d, &rule), &want, "bad rows");
    }
}

/// The split form (a row's lanes over 2, 4 or 8 blocks; kernels/sample.cu) for every rule it
/// takes: the CPU's ids and log-probs, and exactly the single-block kernel's bits, over odd
/// vocabularies, near-ties, masked tokens and unsampleable rows (NaN, +inf, all -inf), outputs
/// poisoned; `sample_tokens_into` picks it for a few rows and such a rule, and not for a rule
/// that searches a kept set or for greedy.
fn split_form_matches_cpu_and_one_block<D: Device>(b: &CudaBackend<D>) {
    use mmr1_fast::backend::cuda::rl::sample::{sample_split_for, splits};
    for (c, &vocab) in [1usize, 2, 7, 255, 256, 257, 600, 1031, 5003].iter().enumerate() {
        let rows = 9;
        let mut x = logits(rows, vocab, 300 + c as u64);
        x[6 * vocab + vocab / 2] = f32::NAN;
        x[7 * vocab] = f32::INFINITY;
        x[8 * vocab..].fill(f32::NEG_INFINITY);
        let d = draws(rows, 17 + c as u64);
        for (temperature, top_k) in [(1.0f32, 0usize), (0.6, 0), (2.5, vocab), (0.05, 0)] {
            let rule = SampleRule { temperature, top_k, top_p: 1.0 };
            assert!(splits(&rule, vocab));
            let want = Cpu.rl_sample(&x, vocab, &d, &rule);
            let one = device_sample(b, &x, vocab, &d, &rule);
            for split in [1usize, 2, 4, 8] {
                let ctx = format!("vocab {vocab}, T {temperature}, top_k {top_k}, split {split}");
                let lg = b.upload(&x);
                let (mut tok, mut lp) = (poisoned(b, rows), poisoned(b, rows));
                b.sample_tokens_split_into(&lg, vocab, &d, &rule, &mut tok, &mut lp, split);
                let ids = b.download(&tok).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let got: Vec<(u32, f32)> = ids.into_iter().zip(b.download(&lp)).collect();
                assert_same(b, &got, &want, &ctx);
                let bits =
                    |v: &[(u32, f32)]| v.iter().map(|(t, l)| (*t, l.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&one), "{ctx}: differs from one block a row");
                // The log-sum-exp itself, bit for bit (a fold in another order moves it by an
                // ulp, which ids and f32 log-probs rarely show).
                let lse = b.sample_split_lse(&lg, vocab, rows, temperature, split);
                for (r, l) in lse.iter().enumerate().filter(|(r, _)| want[*r].0 != INVALID_TOKEN) {
                    let row = &x[r * vocab..(r + 1) * vocab];
                    let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let cpu = mmr1_fast::rl::sampling::tempered_lse(row, mx, temperature as f64);
                    if on_emulator(b) {
                        assert_eq!(
                            l.to_bits(),
                            cpu.to_bits(),
                            "{ctx}, row {r}: lse {l} vs cpu {cpu}"
                        );
                    } else {
                        assert!(
                            (l - cpu).abs() <= 4.0 * f64::EPSILON * cpu.abs().max(1.0),
                            "{ctx}, row {r}: lse"
                        );
                    }
                }
            }
        }
    }
    assert_eq!([1, 9, 64, 100, 128, 512].map(sample_split_for), [8, 8, 4, 2, 2, 1]);
    let searching = [
        SampleRule { temperature: 0.0, top_k: 0, top_p: 1.0 },
        SampleRule { temperature: 1.0, top_k: 0, top_p: 0.9 },
        SampleRule { temperature: 1.0, top_k: 5, top_p: 1.0 },
    ];
    assert!(
        searching.iter().all(|r| !splits(r, 300)),
        "greedy and kept-set rules take one block a row"
    );
}

/// Rows built to put the threshold where the radix search has the most to resolve: inside a
/// run of tied logits (decided by the index digits), among masked -inf tokens (top-k past the
/// finite ones: zero weights kept), across -0 / +0, rows of one repeated value (every set's
/// mass a multiple of one weight), vocabularies at the edges of the index digits
/// (2^8, 2^16 and their neighbours) and the real 151,936 on two rows.
fn radix_search_resolves_ties_masks_and_odd_vocabularies<D: Device>(b: &CudaBackend<D>) {
    let mut cases: Vec<(usize, Vec<f32>)> = vec![];
    for &vocab in &[255usize, 256, 257, 777, 65_535, 65_536, 65_537] {
        let mut r = rng(vocab as u64);
        // A run of ties across the top: a third of the tokens at the maximum.
        let mut tie = rand_vec(&mut r, vocab, 2.0);
        for i in (0..vocab).filter(|i| i % 3 == 1) {
            tie[i] = 2.5;
        }
        // Five finite tokens, the rest masked.
        let mut masked = vec![f32::NEG_INFINITY; vocab];
        for j in 0..5 {
            masked[(j * 97 + 11) % vocab] = r.gen_range(-1.0..1.0);
        }
        // -0 and +0 at the top of a negative row, interleaved.
        let mut zeros: Vec<f32> = rand_vec(&mut r, vocab, 3.0).iter().map(|v| -v.abs()).collect();
        for i in (0..vocab).step_by(5) {
            zeros[i] = if i % 2 == 0 { 0.0 } else { -0.0 };
        }
        // One value everywhere.
        let flat = vec![0.75f32; vocab];
        cases.extend([tie, masked, zeros, flat].into_iter().map(|x| (vocab, x)));
    }
    let rules = [
        SampleRule { temperature: 1.0, top_k: 100, top_p: 1.0 },
        SampleRule { temperature: 0.8, top_k: 0, top_p: 0.5 },
        SampleRule { temperature: 1.2, top_k: 50, top_p: 0.9 },
        SampleRule { temperature: 0.6, top_k: 3, top_p: 1.0 },
    ];
    for (c, (vocab, x)) in cases.iter().enumerate() {
        let vocab = *vocab;
        let d = draws(1, c as u64);
        for rule in &rules {
            let want = Cpu.rl_sample(x, vocab, &d, rule);
            for search in [ThresholdSearch::Radix, ThresholdSearch::RadixExact] {
                let got = device_sample_with(b, x, vocab, &d, rule, search);
                assert_same(
                    b,
                    &got,
                    &want,
                    &format!("case {c} (vocab {vocab}) {rule:?} {search:?}"),
                );
            }
        }
    }
    // The real vocabulary on two rows of near-tie kinds (duplicates; 1-ulp neighbours).
    let vocab = 151_936;
    let x: Vec<f32> = logits(3, vocab, 77)[vocab..].to_vec();
    let d = draws(2, 4);
    for rule in &rules {
        let want = Cpu.rl_sample(&x, vocab, &d, rule);
        for search in [ThresholdSearch::Radix, ThresholdSearch::RadixExact] {
            let got = device_sample_with(b, &x, vocab, &d, rule, search);
            assert_same(b, &got, &want, &format!("vocab {vocab} {rule:?} {search:?}"));
        }
    }
}

/// The draw's walk over one lane's elements goes by chunks of 32 (`sample_tokens_impl`: the
/// warp computes the next 32 weights, thread 0 subtracts them in order): at vocabulary 20,011 a
/// lane holds 78-79 elements, three chunks, and the draws must land past the first chunk
/// (element 32 of a lane = token >= 32 x 256) as well as in it, with the CPU's ids and bits.
fn draws_deep_in_long_lanes_match_the_cpu<D: Device>(b: &CudaBackend<D>) {
    let (vocab, rows) = (20_011, 24);
    let x = logits(rows, vocab, 41);
    let d = draws(rows, 9);
    for rule in [
        SampleRule { temperature: 0.6, top_k: 0, top_p: 1.0 },
        SampleRule { temperature: 1.0, top_k: 0, top_p: 0.95 },
    ] {
        let want = Cpu.rl_sample(&x, vocab, &d, &rule);
        let got = device_sample_with(b, &x, vocab, &d, &rule, ThresholdSearch::Radix);
        assert_same(b, &got, &want, &format!("vocab {vocab} {rule:?}"));
        let deep = want.iter().filter(|(t, _)| *t as usize >= 32 * 256).count();
        let first = want.iter().filter(|(t, _)| (*t as usize) < 32 * 256).count();
        assert!(
            deep >= 3 && first >= 3,
            "{rule:?}: {deep} draws past a lane's first chunk, {first} in it"
        );
    }
}

backend_suite!(
    draws_deep_in_long_lanes_match_the_cpu,
    radix_search_resolves_ties_masks_and_odd_vocabularies,
    sample_matches_cpu,
    split_form_matches_cpu_and_one_block,
    greedy_takes_the_first_maximum_and_sampling_varies_with_the_draw,
    unsampleable_rows_are_flagged
);

/// At the real Qwen2.5 vocabulary (151,936) on the GPU: ids and log-probs against the CPU for
/// a few rows and every kind of rule (`real_vocab::gpu::*`, run by scripts/gpu-check.sh with
/// the other `gpu::` tests and under compute-sanitizer).
#[cfg(feature = "cuda")]
mod real_vocab {
    pub const VOCAB: usize = 151_936;
    pub fn rules() -> [(&'static str, super::SampleRule); 4] {
        use super::SampleRule;
        [
            ("greedy", SampleRule { temperature: 0.0, top_k: 0, top_p: 1.0 }),
            ("T0.6", SampleRule { temperature: 0.6, top_k: 0, top_p: 1.0 }),
            ("T1 top_p0.9", SampleRule { temperature: 1.0, top_k: 0, top_p: 0.9 }),
            ("T0.7 top_k50", SampleRule { temperature: 0.7, top_k: 50, top_p: 1.0 }),
        ]
    }
    pub fn gpu() -> super::CudaBackend<mmr1_fast::backend::cuda::driver::CudaDevice> {
        match super::CudaBackend::new(0) {
            Ok(b) => b,
            Err(e) => panic!("GPU test asked for, but there is no GPU: {e}"),
        }
    }
    mod gpu {
        use super::super::*;
        use super::{gpu, rules, VOCAB};
        #[test]
        #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
        fn matches_cpu() {
            let b = gpu();
            let rows = 6;
            let x = logits(rows, VOCAB, 31);
            let d = draws(rows, 3);
            for (name, rule) in &rules() {
                let want = Cpu.rl_sample(&x, VOCAB, &d, rule);
                for search in SEARCHES {
                    let got = device_sample_with(&b, &x, VOCAB, &d, rule, search);
                    assert_same(&b, &got, &want, &format!("{name} {search:?}"));
                }
                // The default path: the split form for the rules it takes (6 rows: 8 blocks a row).
                let lg = b.upload(&x);
                let via = b.rl_sample(&lg, VOCAB, &d, rule);
                assert_same(&b, &via, &want, &format!("{name} default"));
            }
        }
    }
    /// The time of one call per rule at 64 and 512 rows, printed as `SAMPLE` lines (nothing
    /// is asserted about time). Not under `gpu::`, so compute-sanitizer does not run it.
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn speed() {
        use super::*;
        use mmr1_fast::backend::cuda::rl::sample::{sample_split_for, splits};
        let b = gpu();
        // Microseconds a call of `call`, after a warm-up, over 5 calls.
        let time = |call: &mut dyn FnMut()| {
            call();
            b.device().synchronize();
            let reps = 5;
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                call();
            }
            b.device().synchronize();
            t0.elapsed().as_secs_f64() * 1e6 / reps as f64
        };
        for rows in [64usize, 512] {
            let mut r = rng(rows as u64);
            let x: Vec<f32> = rand_vec(&mut r, rows * VOCAB, 4.0);
            let lg = b.upload(&x);
            let d = draws(rows, 5);
            let (mut tok, mut lp) = (b.zeros(rows), b.zeros(rows));
            for (name, rule) in &rules() {
                // The split form where the rule takes it (the default below 128 rows).
                let split = sample_split_for(rows);
                if splits(rule, VOCAB) {
                    let us = time(&mut || {
                        b.sample_tokens_split_into(&lg, VOCAB, &d, rule, &mut tok, &mut lp, split)
                    });
                    println!("SAMPLE {name} split {split} rows {rows} vocab {VOCAB}: {us:.0} us per call");
                }
                // One block a row: the radix search (the default) and the bisection baseline.
                for search in [ThresholdSearch::Radix, ThresholdSearch::Bisect] {
                    let us = time(&mut || {
                        b.sample_tokens_into_with(&lg, VOCAB, &d, rule, &mut tok, &mut lp, search)
                    });
                    let gbs = (rows * VOCAB * 4) as f64 / (us * 1e-6) / 1e9;
                    println!(
                        "SAMPLE {name} {search:?} rows {rows} vocab {VOCAB}: {us:.0} us per call ({gbs:.0} GB/s of logits read once)"
                    );
                }
            }
        }
    }
}
