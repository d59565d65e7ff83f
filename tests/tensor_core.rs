//! The tensor-core building blocks of kernels/mma.cuh (mma.sync m16n8k16 bf16, ldmatrix
//! x1/x2/x4 and .trans) against a CPU matmul: the `mma_test_bf16` kernel builds its fragments
//! five ways, one of them straight from the PTX ISA's documented layout, so a wrong lane map
//! in the emulator (or in a kernel's use of it) shows up as a wrong product.
//!
//! Runs on the CUDA emulator with `--features emu` and on the GPU with `--features cuda`.
#![cfg(any(feature = "emu", feature = "cuda"))]

use mmr1_fast::backend::cuda::device::{Arg, Device};
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn bf16_round(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

fn mma_layouts<D: Device>(b: &CudaBackend<D>) {
    let mut r = ChaCha8Rng::seed_from_u64(21);
    // Exact multiples of the tile and ragged edges in every dimension.
    for (m, n, k) in
        [(16usize, 8usize, 16usize), (16, 8, 32), (37, 21, 50), (5, 3, 7), (48, 40, 96)]
    {
        let a: Vec<f32> = (0..m * k).map(|_| r.gen_range(-2.0f32..2.0)).collect();
        let bm: Vec<f32> = (0..k * n).map(|_| r.gen_range(-2.0f32..2.0)).collect();
        let c: Vec<f32> = (0..m * n).map(|_| r.gen_range(-1.0f32..1.0)).collect();
        // Reference in f64 from the bf16-rounded inputs (the products are exact in f32).
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = c[i * n + j] as f64;
                for kk in 0..k {
                    s += bf16_round(a[i * k + kk]) as f64 * bf16_round(bm[kk * n + j]) as f64;
                }
                want[i * n + j] = s as f32;
            }
        }
        let (ag, bg) = (b.upload(&a), b.upload(&bm));
        for mode in 0..5 {
            let cg = b.upload(&c);
            b.device().launch(
                "mma_test_bf16",
                [n.div_ceil(8) as u32, m.div_ceil(16) as u32, 1],
                [32, 1, 1],
                0,
                &[
                    Arg::Ptr(cg.mem()),
                    Arg::Ptr(ag.mem()),
                    Arg::Ptr(bg.mem()),
                    Arg::I32(m as i32),
                    Arg::I32(n as i32),
                    Arg::I32(k as i32),
                    Arg::I32(mode),
                ],
            );
            let got = b.download(&cg);
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (g, w) in got.iter().zip(&want) {
                assert!(g.is_finite(), "mode {mode} ({m}x{n}x{k}): non-finite output");
                num += (*g as f64 - *w as f64).powi(2);
                den += (*w as f64).powi(2);
            }
            let err = num.sqrt() / den.sqrt();
            println!("ERR mma_bf16 mode {mode} {m}x{n}x{k}: {err:.3e}");
            // f32 accumulation of exact products: only summation order differs.
            assert!(err < 1e-6, "mode {mode} ({m}x{n}x{k}): relative L2 error {err:.3e}");
        }
    }
}

/// The test above must be able to fail: a B operand with two k rows swapped gives a wrong
/// product, so the check is sensitive to a one-lane layout slip.
fn mma_test_can_fail<D: Device>(b: &CudaBackend<D>) {
    let (m, n, k) = (16usize, 8usize, 16usize);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
    let bm: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
    let mut swapped = bm.clone();
    for j in 0..n {
        swapped.swap(2 * n + j, 3 * n + j);
    }
    let run = |bv: &[f32]| {
        let (ag, bg, cg) = (b.upload(&a), b.upload(bv), b.upload(&vec![0.0; m * n]));
        b.device().launch(
            "mma_test_bf16",
            [1, 1, 1],
            [32, 1, 1],
            0,
            &[
                Arg::Ptr(cg.mem()),
                Arg::Ptr(ag.mem()),
                Arg::Ptr(bg.mem()),
                Arg::I32(m as i32),
                Arg::I32(n as i32),
                Arg::I32(k as i32),
                Arg::I32(1),
            ],
        );
        b.download(&cg)
    };
    assert_ne!(run(&bm), run(&swapped), "swapping two k rows of B did not change the product");
}

#[cfg(feature = "emu")]
mod emu {
    use mmr1_fast::backend::cuda::CudaBackend;
    #[test]
    fn mma_layouts() {
        super::mma_layouts(&CudaBackend::emulator());
    }
    #[test]
    fn mma_test_can_fail() {
        super::mma_test_can_fail(&CudaBackend::emulator());
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use mmr1_fast::backend::cuda::CudaBackend;
    fn with_gpu(f: impl FnOnce(&CudaBackend<mmr1_fast::backend::cuda::driver::CudaDevice>)) {
        match CudaBackend::new(0) {
            Ok(b) => f(&b),
            Err(e) => println!("SKIPPED: no CUDA device ({e})"),
        }
    }
    #[test]
    fn mma_layouts() {
        with_gpu(|b| super::mma_layouts(b));
    }
    #[test]
    fn mma_test_can_fail() {
        with_gpu(|b| super::mma_test_can_fail(b));
    }
}
