//! Helpers of the kernel suites (a backend's ops against the CPU reference): random inputs
//! that are never zero, NaN-poisoned outputs, a relative-L2 check that `scripts/gpu-check.sh`
//! reads, and `backend_suite!`, which runs each check on the emulator (every CI schedule) and,
//! `#[ignore]`d where there is no GPU, on the real GPU.
//! Declared once in main.rs (`#[macro_use]`), before the files that use it.
#![allow(dead_code, unused_macros)]

use mmr1_fast::backend::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in (-scale, scale), never exactly zero.
pub fn rand_vec(r: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| loop {
            let v: f32 = r.gen_range(-scale..scale);
            if v != 0.0 {
                break v;
            }
        })
        .collect()
}

/// A buffer of `n` NaNs: an op that leaves part of its output unwritten fails the check.
pub fn poisoned<B: Backend>(b: &B, n: usize) -> B::Buf {
    let mut x = b.zeros(n);
    b.fill(&mut x, f32::NAN);
    x
}

/// Relative L2 error of `got` against `want`, printed as an `ERR` line that
/// scripts/gpu-check.sh reads for its error column; NaN or infinity anywhere fails. A small
/// absolute floor keeps all-zero references (entropy of a one-token vocabulary) meaningful.
pub fn rel_err(what: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {} (reference {})", got[i], want[i]);
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in got.iter().zip(want) {
        num += ((*a as f64) - (*b as f64)).powi(2);
        den += (*b as f64).powi(2);
    }
    let err = num.sqrt() / (den.sqrt() + 1e-6);
    println!("ERR {what}: {err:.3e}");
    err
}

/// `rel_err(..) <= tol`, or a failure naming the quantity.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let err = rel_err(what, got, want);
    assert!(err <= tol, "{what}: relative L2 error {err:.3e} > {tol:.0e}");
}

/// `backend_suite!(check_a, check_b)`: for each generic `fn check(b: &impl Backend)` of the
/// test file, a test on the emulator under `Schedule::CI` (or `MMR1_EMU_SCHEDULE`) and an
/// ignored one on GPU 0 that `scripts/gpu-check.sh` runs with `--include-ignored`.
macro_rules! backend_suite {
    ($($t:ident),* $(,)?) => {
        #[cfg(feature = "emu")]
        mod emu {
            use mmr1_fast::backend::cuda::{emu::{EmuDevice, Schedule}, CudaBackend};
            /// Every launch under each CI schedule (or those of MMR1_EMU_SCHEDULE), results
            /// bit-identical across them.
            fn emulator() -> CudaBackend<EmuDevice> {
                match std::env::var("MMR1_EMU_SCHEDULE") {
                    Ok(_) => CudaBackend::emulator(),
                    Err(_) => CudaBackend::emulator_with(&Schedule::CI),
                }
            }
            $( #[test] fn $t() { super::$t(&emulator()); } )*
        }
        #[cfg(feature = "cuda")]
        mod gpu {
            use mmr1_fast::backend::cuda::{driver::CudaDevice, CudaBackend};
            use std::sync::OnceLock;
            /// One context for the whole suite. The tests are #[ignore]d, so they run only when
            /// asked for (`--include-ignored`, as scripts/gpu-check.sh does): then a missing GPU
            /// is a failure, never a pass.
            fn gpu() -> &'static CudaBackend<CudaDevice> {
                static B: OnceLock<Result<CudaBackend<CudaDevice>, String>> = OnceLock::new();
                match B.get_or_init(|| CudaBackend::new(0)) {
                    Ok(b) => b,
                    Err(e) => panic!("GPU test asked for, but there is no GPU: {e}"),
                }
            }
            $( #[test] #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"] fn $t() { super::$t(gpu()); } )*
        }
    };
}
