//! The fused log-prob kernels at the real Qwen2 vocabulary (151,936 = 148 blocks of 1024 + a
//! tail of 384), with the largest logit and the target at the last index and inside the tail
//! block, against the CPU reference. Tolerances are per quantity and per row, tight enough
//! that a kernel which drops one vocabulary element fails: the rows put a dominant logit
//! exactly where a dropped element would be, so dropping it moves lp by whole nats.
//!
//! Runs on the CUDA emulator (`--features emu`) and on a GPU (`--features cuda`). Few rows, so
//! it stays fast on the emulator.
#![cfg(any(feature = "emu", feature = "cuda"))]

use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOCAB: usize = 151_936;
/// First index of the last, partial 1024-wide block.
const TAIL: usize = (VOCAB / 1024) * 1024;

/// Per-row tolerances (absolute, in nats). Measured clean error on the emulator: lp <= 9.6e-7
/// (|lp| up to 15.5, i.e. a few f32 ulps), entropy <= 9.6e-7; a dropped element gives errors
/// of order 1 in the spiked rows.
const LP_TOL: f64 = 5e-6;
const ENT_TOL: f64 = 5e-6;
/// dlogits: per element, relative to the row's largest |dlogit| (measured clean <= 2.8e-7);
/// an unwritten element is NaN (poisoned) and fails outright.
const DL_TOL: f64 = 5e-6;

struct Case {
    /// (index, value) of the spike in the row, if any.
    spike: Option<(usize, f32)>,
    target: usize,
    inv_temp: f32,
}

fn cases() -> Vec<Case> {
    vec![
        // Largest logit and target at the last index.
        Case { spike: Some((VOCAB - 1, 12.0)), target: VOCAB - 1, inv_temp: 1.0 },
        // Largest logit inside the tail block, target at the last index.
        Case { spike: Some((TAIL + 200, 12.0)), target: VOCAB - 1, inv_temp: 1.0 },
        // Largest logit at the last index, target at the first.
        Case { spike: Some((VOCAB - 1, 11.0)), target: 0, inv_temp: 0.7 },
        // Largest logit at the first element of the tail block, target there too.
        Case { spike: Some((TAIL, 10.0)), target: TAIL, inv_temp: 1.3 },
        // No spike: uniform logits, target in the tail.
        Case { spike: None, target: TAIL + 383, inv_temp: 1.0 },
    ]
}

fn run<B: Backend>(b: &B, logits: &[f32], c: &Case, dlp: f32, dent: f32) -> [Vec<f32>; 3] {
    let lg = b.upload(logits);
    let mut lp = b.zeros(1);
    let mut ent = b.zeros(1);
    b.fill(&mut lp, f32::NAN);
    b.fill(&mut ent, f32::NAN);
    let t = [c.target as u32];
    b.logprobs(&mut lp, &mut ent, &lg, &t, 1, VOCAB, c.inv_temp);
    let mut dl = b.zeros(VOCAB);
    b.fill(&mut dl, f32::NAN);
    b.logprobs_backward(
        &mut dl,
        &lg,
        &t,
        &b.upload(&[dlp]),
        &b.upload(&[dent]),
        1,
        VOCAB,
        c.inv_temp,
    );
    [b.download(&lp), b.download(&ent), b.download(&dl)]
}

fn check<B: Backend>(b: &B) {
    let mut r = ChaCha8Rng::seed_from_u64(151);
    for (i, c) in cases().iter().enumerate() {
        let mut logits: Vec<f32> = (0..VOCAB).map(|_| r.gen_range(-4.0f32..4.0)).collect();
        if let Some((j, v)) = c.spike {
            logits[j] = v;
        }
        let (dlp, dent) = (r.gen_range(0.5f32..1.5), r.gen_range(-1.5f32..-0.5));
        let want = run(&Cpu, &logits, c, dlp, dent);
        let got = run(b, &logits, c, dlp, dent);
        let tag =
            format!("case {i} (spike {:?}, target {}, 1/T {})", c.spike, c.target, c.inv_temp);
        let lp_err = (got[0][0] as f64 - want[0][0] as f64).abs();
        let ent_err = (got[1][0] as f64 - want[1][0] as f64).abs();
        println!("ERR {tag}: lp {lp_err:.2e} (lp {}), entropy {ent_err:.2e}", want[0][0]);
        assert!(lp_err <= LP_TOL, "{tag}: lp {} vs reference {}", got[0][0], want[0][0]);
        assert!(ent_err <= ENT_TOL, "{tag}: entropy {} vs reference {}", got[1][0], want[1][0]);
        let scale = want[2].iter().fold(0f64, |m, x| m.max((*x as f64).abs()));
        let mut worst = (0usize, 0f64);
        for (j, (g, w)) in got[2].iter().zip(&want[2]).enumerate() {
            let e =
                if g.is_finite() { (*g as f64 - *w as f64).abs() / scale } else { f64::INFINITY };
            if e > worst.1 {
                worst = (j, e);
            }
        }
        println!("ERR {tag}: dlogits {:.2e} at {}", worst.1, worst.0);
        assert!(
            worst.1 <= DL_TOL,
            "{tag}: dlogits[{}] = {} vs reference {} (relative {:.2e})",
            worst.0,
            got[2][worst.0],
            want[2][worst.0],
            worst.1
        );
    }
}

#[cfg(feature = "emu")]
#[test]
fn logprobs_at_vocab_151936_on_the_emulator() {
    check(&mmr1_fast::backend::cuda::CudaBackend::emulator());
}

/// On a GPU, in a `gpu` module: scripts/gpu-check.sh runs every file's (--include-ignored).
#[cfg(feature = "cuda")]
mod gpu {
    #[test]
    #[ignore = "needs a CUDA GPU: run with --ignored on a GPU machine (scripts/gpu-check.sh)"]
    fn logprobs_at_vocab_151936_on_the_gpu() {
        let b = mmr1_fast::backend::cuda::CudaBackend::new(0).expect("a CUDA GPU");
        super::check(&b);
    }
}
