//! The tensor-core building blocks of kernels/mma.cuh (mma.sync m16n8k16 bf16, ldmatrix
//! x1/x2/x4 and .trans) against a CPU matmul: the `mma_test_bf16` kernel builds its fragments
//! five ways, one of them straight from the PTX ISA's documented layout, so a wrong lane map
//! in the emulator (or in a kernel's use of it) shows up as a wrong product.
//!
//! Runs on the CUDA emulator with `--features emu` and on the GPU with `--features cuda`.
#![cfg(any(feature = "emu", feature = "cuda"))]

use mmr1_fast::backend::cuda::device::{Arg, Device};
use mmr1_fast::backend::cuda::{CudaBackend, DevBuf};
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

/// Core-matrix steps for `wgmma_test_n*` (kernels/wgmma_test.cu): `(lbo, sbo, bytes)` with the
/// cores along K innermost (layout 0) or along N innermost (layout 1), each with a 128- or
/// 256-byte gap between core rows, so a descriptor that swaps or misreads a step reads gaps
/// or other cores.
fn wgmma_steps(layout: usize, k: usize, n: usize) -> (usize, usize, usize) {
    if layout == 0 {
        let sbo = (k / 8) * 128 + 256;
        (128, sbo, (n / 8) * sbo)
    } else {
        let lbo = (n / 8) * 128 + 128;
        (lbo, 128, (k / 8) * lbo)
    }
}

/// Runs `wgmma_test_n{n}`: C (64 x n) + A (64 x k) B (k x n), B N-major when `trans`, placed
/// with `steps` and read by an instruction with `desc` (N-major, lbo, sbo).
#[allow(clippy::too_many_arguments)]
fn wgmma_run<D: Device>(
    b: &CudaBackend<D>,
    a: &[f32],
    bm: &[f32],
    c: &[f32],
    k: usize,
    n: usize,
    trans: bool,
    steps: (usize, usize, usize),
    desc: (bool, usize, usize),
) -> Vec<f32> {
    wgmma_run_a(b, a, bm, c, (k, n, trans), steps, desc, false)
}

/// `wgmma_run` with A from registers, or from shared memory after B (`a_smem`: the `_ss` form;
/// the kernel places it K-major with a gap after each row of cores).
#[allow(clippy::too_many_arguments)]
fn wgmma_run_a<D: Device>(
    b: &CudaBackend<D>,
    a: &[f32],
    bm: &[f32],
    c: &[f32],
    (k, n, trans): (usize, usize, bool),
    steps: (usize, usize, usize),
    desc: (bool, usize, usize),
    a_smem: bool,
) -> Vec<f32> {
    let (ag, bg, cg) = (b.upload(a), b.upload(bm), b.upload(c));
    let a_at = steps.2.next_multiple_of(128);
    let smem = if a_smem { a_at + 8 * ((k / 8) * 128 + 128) } else { steps.2 };
    let name = format!("wgmma_test_n{n}");
    b.device().set_max_dynamic_shared(&name, smem as u32);
    b.device().launch(
        &name,
        [1, 1, 1],
        [128, 1, 1],
        smem as u32,
        &[
            Arg::Ptr(cg.mem()),
            Arg::Ptr(ag.mem()),
            Arg::Ptr(bg.mem()),
            Arg::I32(k as i32),
            Arg::I32(trans as i32),
            Arg::I32(steps.0 as i32),
            Arg::I32(steps.1 as i32),
            Arg::I32(desc.0 as i32),
            Arg::I32(desc.1 as i32),
            Arg::I32(desc.2 as i32),
            Arg::I32(if a_smem { a_at as i32 } else { -1 }),
        ],
    );
    b.download(&cg)
}

/// Relative L2 distance of `got` from `want` (NaN when `got` has a NaN).
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    num.sqrt() / den.sqrt()
}

/// When a wgmma product is wrong on a GPU, prints what a next session needs to mend the layout
/// model without more GPU time: the error with the descriptor's steps swapped and with the
/// other major (in case the reading of LBO/SBO or of the transpose flag is what is wrong), and
/// for the first wrong outputs where in the expected matrix their value sits (a fragment
/// layout slip shows as a permutation).
fn wgmma_diagnose<D: Device>(
    b: &CudaBackend<D>,
    tag: &str,
    (a, bm, c): (&[f32], &[f32], &[f32]),
    (k, n, trans): (usize, usize, bool),
    steps: (usize, usize, usize),
    got: &[f32],
    want: &[f32],
) {
    // Room for any of the readings below (they may reach past the tile's own bytes).
    let room = (k / 8 + n / 8 + 2) * steps.0.max(steps.1);
    let roomy = (steps.0, steps.1, room);
    b.device().set_max_dynamic_shared(&format!("wgmma_test_n{n}"), room as u32);
    for (what, desc) in [
        ("steps swapped", (trans, steps.1, steps.0)),
        ("other major", (!trans, steps.0, steps.1)),
        ("other major, steps swapped", (!trans, steps.1, steps.0)),
    ] {
        let alt = wgmma_run(b, a, bm, c, k, n, trans, roomy, desc);
        println!("WGMMA-DIAG {tag}: read with {what}: relative L2 {:.3e}", rel_l2(&alt, want));
    }
    let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * y.abs().max(1.0);
    let wrong = got.iter().zip(want).enumerate().filter(|(_, (g, w))| !close(**g, **w));
    for (i, (g, w)) in wrong.take(8) {
        let at = want.iter().position(|x| close(*g, *x));
        let at = at.map_or("nowhere".to_string(), |j| format!("({}, {})", j / n, j % n));
        println!(
            "WGMMA-DIAG {tag}: out ({}, {}) = {g} (want {w}); that value is at {at}",
            i / n,
            i % n
        );
    }
}

/// Hopper's wgmma (kernels/wgmma.cuh) against a CPU matmul: N 64 and 128, K 16 to 64, B
/// K-major and N-major, two core orders with gaps (`wgmma_steps`), C accumulated, A from
/// registers and from shared memory. On the
/// emulator this checks the kernels' use of the layout as the emulator reads it; on an sm_90
/// GPU it checks that reading against the hardware (the emulator's model of the descriptor
/// is this project's reading of the PTX ISA, and the GPU is the judge of it).
fn wgmma_layouts<D: Device>(b: &CudaBackend<D>) {
    let mut r = ChaCha8Rng::seed_from_u64(23);
    for n in [64usize, 128] {
        for k in [16usize, 48, 64] {
            let a: Vec<f32> = (0..64 * k).map(|_| r.gen_range(-2.0f32..2.0)).collect();
            let bm: Vec<f32> = (0..k * n).map(|_| r.gen_range(-2.0f32..2.0)).collect();
            let c: Vec<f32> = (0..64 * n).map(|_| r.gen_range(-1.0f32..1.0)).collect();
            let mut want = vec![0.0f32; 64 * n];
            for i in 0..64 {
                for j in 0..n {
                    let mut s = c[i * n + j] as f64;
                    for kk in 0..k {
                        s += bf16_round(a[i * k + kk]) as f64 * bf16_round(bm[kk * n + j]) as f64;
                    }
                    want[i * n + j] = s as f32;
                }
            }
            for trans in [false, true] {
                for layout in 0..2 {
                    let steps = wgmma_steps(layout, k, n);
                    let got =
                        wgmma_run(b, &a, &bm, &c, k, n, trans, steps, (trans, steps.0, steps.1));
                    let err = rel_l2(&got, &want);
                    let tag = format!("wgmma n{n} k{k} trans {trans} layout {layout}");
                    println!("ERR {tag}: {err:.3e}");
                    // NaN (a non-finite output) fails too.
                    if err.is_nan() || err >= 1e-6 {
                        let inputs = (&a[..], &bm[..], &c[..]);
                        wgmma_diagnose(b, &tag, inputs, (k, n, trans), steps, &got, &want);
                    }
                    assert!(err < 1e-6, "{tag}: relative L2 error {err:.3e} (WGMMA-DIAG above)");
                    // A from shared memory (the `_ss` form), B as above.
                    let desc = (trans, steps.0, steps.1);
                    let got = wgmma_run_a(b, &a, &bm, &c, (k, n, trans), steps, desc, true);
                    let err = rel_l2(&got, &want);
                    println!("ERR {tag} A in shared memory: {err:.3e}");
                    assert!(err < 1e-6, "{tag}, A in shared memory: relative L2 error {err:.3e}");
                }
            }
        }
    }
}

/// The test above can fail: a descriptor with its two steps swapped (the data placed as
/// before) gives another product, for both majors, and one whose start is a core further on
/// too.
fn wgmma_test_can_fail<D: Device>(b: &CudaBackend<D>) {
    let (k, n) = (64usize, 64usize);
    let a: Vec<f32> = (0..64 * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
    let bm: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
    let c = vec![0.0f32; 64 * n];
    for trans in [false, true] {
        // A square grid of cores (8 x 8) with a gap after each row of them, so that swapped
        // steps stay inside the tile.
        let steps = (128 * 9, 128, 128 * 9 * (k / 8));
        let right = wgmma_run(b, &a, &bm, &c, k, n, trans, steps, (trans, steps.0, steps.1));
        let swapped = wgmma_run(b, &a, &bm, &c, k, n, trans, steps, (trans, steps.1, steps.0));
        assert_ne!(
            right, swapped,
            "trans {trans}: swapping LBO and SBO did not change the product"
        );
        let major = wgmma_run(b, &a, &bm, &c, k, n, trans, steps, (!trans, steps.0, steps.1));
        assert_ne!(
            right, major,
            "trans {trans}: reading B with the other major did not change the product"
        );
    }
}

/// Values that test a rounding to bf16: ties both ways (1 + 2^-8 and 1 + 3 * 2^-8 are exact
/// f32 values halfway between two bf16 values), a carry into the exponent, infinities,
/// subnormals (kept, not flushed), the largest finite (rounds to infinity), signed zeros,
/// NaNs (quiet, signalling, negative), then random values over many binades.
fn conversion_inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let special = [
        1.0f32 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        f32::from_bits(0x3fff_ffff),
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        -1e-40,
        f32::from_bits(1),
        f32::MIN_POSITIVE,
        f32::MAX,
        -0.0,
        0.0,
        f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc1_2345),
    ];
    (0..n)
        .map(|i| match special.get(i % 64) {
            Some(v) => *v,
            None => r.gen_range(-1.0f32..1.0) * 2f32.powi(r.gen_range(-30..30)),
        })
        .collect()
}

/// The bf16 bits a conversion must give: `half`'s round to nearest even. A NaN must stay a
/// NaN (the GPU's cvt.rn.bf16.f32 gives the canonical 0x7fff, `half` and the emulator keep
/// the payload's top bits), so NaNs are compared as NaNs.
fn assert_bf16_bits(got: &[u16], x: &[f32], what: &str) {
    for (i, (g, v)) in got.iter().zip(x).enumerate() {
        let want = half::bf16::from_f32(*v);
        if want.is_nan() {
            assert!(half::bf16::from_bits(*g).is_nan(), "{what}: value {i} ({v}) -> {g:#06x}");
        } else {
            assert_eq!(*g, want.to_bits(), "{what}: value {i} ({v:e}) of {}", x.len());
        }
    }
}

/// Runs `launch` (which converts `x` into its first argument) on an output poisoned with
/// 0xadad and 8 values longer than `x`, checks every value and that the 8 past the end are
/// untouched.
fn check_conversion<D: Device>(
    b: &CudaBackend<D>,
    x: &[f32],
    what: &str,
    launch: impl FnOnce(&D::Mem, &D::Mem),
) {
    let xg = b.upload(x);
    let out = b.device().upload(&vec![0xad; 2 * (x.len() + 8)]);
    launch(&out, xg.mem());
    let got: Vec<u16> = b
        .device()
        .download(&out, 2 * (x.len() + 8))
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_bf16_bits(&got[..x.len()], x, what);
    assert!(got[x.len()..].iter().all(|&g| g == 0xadad), "{what}: wrote past the end");
}

/// Both conversion kernels (`f32_to_bf16`, the baseline, and `f32_to_bf16_x8`, what the bf16
/// GEMMs use) round to nearest even like `half`, at lengths that leave every tail (n % 8)
/// and span several blocks, through the backend's launcher and through one- and three-block
/// grids that make the threads stride.
fn bf16_conversion<D: Device>(b: &CudaBackend<D>) {
    use mmr1_fast::backend::cuda::device::launch_f32_to_bf16;
    for (j, n) in
        [1usize, 3, 4, 5, 7, 8, 9, 15, 16, 17, 64, 1023, 1024, 4097, 70_001].into_iter().enumerate()
    {
        let x = conversion_inputs(n, 30 + j as u64);
        check_conversion(b, &x, &format!("launcher, n {n}"), |out, x| {
            launch_f32_to_bf16(b.device(), out, x, n)
        });
        for (name, grid, block) in
            [("f32_to_bf16_x8", 1, 32), ("f32_to_bf16_x8", 3, 64), ("f32_to_bf16", 3, 64)]
        {
            let what = format!("{name}, n {n}, grid {grid} x {block}");
            check_conversion(b, &x, &what, |out, x| {
                b.device().launch(
                    name,
                    [grid, 1, 1],
                    [block, 1, 1],
                    0,
                    &[Arg::Ptr(out), Arg::Ptr(x), Arg::I64(n as i64)],
                )
            });
        }
    }
}

/// The stale-shadow guard of activation shadows: an activation whose conversion a bf16 GEMM
/// kept is written (by a kernel, as a GEMM's output, by a copy), and the next GEMM must read
/// the new values: each product is checked against the CPU product of the rounded operands
/// (bit for bit where `exact`, the emulator; cuBLAS sums in its own order, so on a GPU within
/// 1e-5 of the sum of |terms|, while a stale operand is off by O(1)), and a write must cost
/// the shadow (the product after it is no hit for `x`). `b` runs bf16 GEMMs with weight and
/// activation shadows on.
fn activation_shadows_end_when_written<D: Device>(b: &CudaBackend<D>, exact: bool) {
    use mmr1_fast::backend::cpu::Cpu;
    use mmr1_fast::backend::Tr;
    let (m, n, k) = (5, 9, 16);
    let mut r = ChaCha8Rng::seed_from_u64(25);
    let mut rand = |len: usize| (0..len).map(|_| r.gen_range(-1.0f32..1.0)).collect::<Vec<_>>();
    let round = |v: &[f32]| v.iter().map(|x| bf16_round(*x)).collect::<Vec<_>>();
    let wh = rand(n * k);
    let w = b.upload(&wh);
    let hits = || b.memory_stats().expect("a caching allocator").shadow_hits;
    // x @ w^T on the device against the CPU; returns the shadow hits it made.
    let check = |x: &mmr1_fast::backend::cuda::DevBuf<D::Mem>, what: &str| -> u64 {
        let h0 = hits();
        let mut out = b.upload(&vec![f32::NAN; m * n]);
        b.matmul(&mut out, x, Tr::N, &w, Tr::T, m, n, k, 0.0);
        let (xr, wr) = (round(&b.download(x)), round(&wh));
        let mut want = vec![0.0; m * n];
        Cpu.matmul(&mut want, &xr, Tr::N, &wr, Tr::T, m, n, k, 0.0);
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let mut bound = vec![0.0; m * n];
        Cpu.matmul(&mut bound, &abs(&xr), Tr::N, &abs(&wr), Tr::T, m, n, k, 0.0);
        let got = b.download(&out);
        let ok = |(g, (w, a)): (&f32, (&f32, &f32))| {
            if exact {
                g.to_bits() == w.to_bits()
            } else {
                (g - w).abs() <= 1e-5 * a
            }
        };
        assert!(
            got.iter().zip(want.iter().zip(&bound)).all(ok),
            "{what}: the product read stale values"
        );
        hits() - h0
    };
    let mut x = b.upload(&rand(m * k));
    b.scale(&mut x, 1.5); // written by a kernel: an activation, not a pristine upload
    assert_eq!(check(&x, "first use"), 0, "nothing to hit yet");
    assert_eq!(check(&x, "second use"), 2, "w (pristine) and x kept their conversions");

    b.scale(&mut x, -0.75);
    assert_eq!(check(&x, "after a kernel wrote x"), 1, "only w's shadow is valid");
    assert_eq!(check(&x, "again"), 2);

    let (y, z) = (b.upload(&rand(m * 3)), b.upload(&rand(3 * k)));
    b.matmul(&mut x, &y, Tr::N, &z, Tr::N, m, k, 3, 0.0);
    assert_eq!(check(&x, "after x was a GEMM's output"), 1);

    let c = b.upload(&rand(m * k));
    b.copy(&mut x, 0, &c, 0, m * k);
    assert_eq!(check(&x, "after a copy into x"), 1);
}

/// AdamW with bf16 weight shadows on (`adamw_bf16shadow_f32`) writes the weight, its moments
/// and its bf16 shadow in one pass. Over three steps from the same inputs: the weight and
/// moments are the bits of the plain kernel (`adamw_f32`, run with bf16 GEMMs off), after
/// each step the shadow is the round-to-nearest-even conversion of the new weight bit for
/// bit, a bf16 GEMM reads the weight from it (a shadow hit), and a write ends it: by a
/// kernel naming the weight, or through a device table (`fill_many`). `b` runs bf16 GEMMs
/// with weight shadows on; it is switched to f32 GEMMs for the reference run and back.
fn adamw_writes_the_weight_shadow<D: Device>(b: &mut CudaBackend<D>) {
    use mmr1_fast::backend::{AdamwStep, Tr};
    let hits = |b: &CudaBackend<D>| b.memory_stats().expect("a caching allocator").shadow_hits;
    for (j, n) in [1usize, 7, 8, 4099].into_iter().enumerate() {
        let mut r = ChaCha8Rng::seed_from_u64(40 + j as u64);
        let mut rand =
            |len: usize, s: f32| (0..len).map(|_| r.gen_range(-s..s)).collect::<Vec<_>>();
        let (p0, m0, v0) = (rand(n, 1.0), rand(n, 0.1), rand(n, 0.01));
        let v0: Vec<f32> = v0.iter().map(|x| x.abs()).collect();
        let grads: Vec<Vec<f32>> = (0..3).map(|_| rand(n, 1.0)).collect();
        let x = rand(5 * n, 1.0);
        let run = |b: &CudaBackend<D>, bf16: bool| {
            let (mut p, mut m, mut v) = (b.upload(&p0), b.upload(&m0), b.upload(&v0));
            for (t, g) in grads.iter().enumerate() {
                let hp = AdamwStep {
                    lr: 1e-2,
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    step: t as u64 + 1,
                    grad_scale: 0.5,
                };
                b.adamw(&mut p, &b.upload(g), &mut m, &mut v, hp);
                let shadow = b.device().bf16_shadow_bits(p.mem(), n);
                if !bf16 {
                    assert!(shadow.is_none(), "n {n}: a shadow with f32 GEMMs");
                    continue;
                }
                let what = format!("n {n}, step {}", t + 1);
                let shadow = shadow.unwrap_or_else(|| panic!("{what}: AdamW left no shadow"));
                assert_bf16_bits(&shadow, &b.download(&p), &format!("shadow, {what}"));
                // out[5, 1] = x[5, n] @ p^T reads p's shadow.
                let (h0, mut out) = (hits(b), b.upload(&[f32::NAN; 5]));
                b.matmul(&mut out, &b.upload(&x), Tr::N, &p, Tr::T, 5, 1, n, 0.0);
                assert_eq!(hits(b) - h0, 1, "{what}: the GEMM did not read p's shadow");
            }
            [&p, &m, &v].map(|x| b.download(x).iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        let fused = run(b, true);
        b.device_mut().set_gemm_precision(false).unwrap();
        let plain = run(b, false);
        b.device_mut().set_gemm_precision(true).unwrap();
        assert!(fused == plain, "n {n}: the shadow-writing AdamW changed p, m or v");

        // The stale-shadow guard: writes end the shadow AdamW made.
        let step = AdamwStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 1,
            grad_scale: 1.0,
        };
        let (mut p, mut m, mut v) = (b.upload(&p0), b.upload(&m0), b.upload(&v0));
        b.adamw(&mut p, &b.upload(&grads[0]), &mut m, &mut v, step);
        assert!(b.device().bf16_shadow_bits(p.mem(), n).is_some());
        b.scale(&mut p, 1.5);
        assert!(b.device().bf16_shadow_bits(p.mem(), n).is_none(), "n {n}: kept after scale");
        b.adamw(&mut p, &b.upload(&grads[1]), &mut m, &mut v, step);
        assert!(b.device().bf16_shadow_bits(p.mem(), n).is_some());
        b.fill_many(&mut [&mut m, &mut p], 0.25);
        assert!(b.device().bf16_shadow_bits(p.mem(), n).is_none(), "n {n}: kept after fill_many");
    }
}

/// The kernels that write a GEMM operand and, with activation shadows on, its bf16 copy
/// (src/backend/cuda/producer_shadows.rs): RMSNorm (out; rstd has none), SwiGLU, SwiGLU's
/// backward (d gate, d up), and the log-prob backward (d logits; `width` is the vocabulary).
#[derive(Clone, Copy, Debug)]
enum Producer {
    RmsNorm,
    Swiglu,
    SwigluBackward,
    LogprobsBackward,
}

impl Producer {
    const ALL: [Producer; 4] =
        [Producer::RmsNorm, Producer::Swiglu, Producer::SwigluBackward, Producer::LogprobsBackward];

    /// Inputs for `rows x width` (random over several binades, gate values far enough out to
    /// saturate the sigmoid both ways), and the lengths of the outputs, those with a shadow
    /// first, with how many have one.
    fn case(self, rows: usize, width: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>, usize) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let n = rows * width;
        let mut rand = |len: usize, lo: i32, hi: i32| -> Vec<f32> {
            (0..len).map(|_| r.gen_range(-1.0f32..1.0) * 2f32.powi(r.gen_range(lo..hi))).collect()
        };
        match self {
            Producer::RmsNorm => (vec![rand(n, -8, 8), rand(width, -4, 4)], vec![n, rows], 1),
            Producer::Swiglu => (vec![rand(n, -6, 5), rand(n, -8, 8)], vec![n], 1),
            Producer::SwigluBackward => {
                (vec![rand(n, -8, 8), rand(n, -6, 5), rand(n, -8, 8)], vec![n, n], 2)
            }
            Producer::LogprobsBackward => {
                // Logits, d lp, d entropy; from 3 rows on, row 1 is all -inf (zero gradient).
                let mut logits = rand(n, -2, 4);
                if rows >= 3 {
                    logits[width..2 * width].fill(f32::NEG_INFINITY);
                }
                (vec![logits, rand(rows, -2, 2), rand(rows, -2, 2)], vec![n], 1)
            }
        }
    }

    /// Runs the producer through the `Backend` op from `ins` into `outs`.
    fn run<D: Device>(
        self,
        b: &CudaBackend<D>,
        outs: &mut [DevBuf<D::Mem>],
        ins: &[DevBuf<D::Mem>],
        rows: usize,
        width: usize,
    ) {
        match (self, outs) {
            (Producer::RmsNorm, [out, rstd]) => {
                b.rmsnorm(out, rstd, &ins[0], &ins[1], rows, width, 1e-6)
            }
            (Producer::Swiglu, [out]) => b.swiglu(out, &ins[0], &ins[1]),
            (Producer::SwigluBackward, [dg, du]) => {
                b.swiglu_backward(dg, du, &ins[0], &ins[1], &ins[2])
            }
            (Producer::LogprobsBackward, [dlogits]) => {
                let targets: Vec<u32> = (0..rows).map(|r| ((7 * r + 3) % width) as u32).collect();
                b.logprobs_backward(dlogits, &ins[0], &targets, &ins[1], &ins[2], rows, width, 0.7)
            }
            (p, o) => panic!("{p:?}: {} outputs", o.len()),
        }
    }
}

/// A producer writing an output that already has a shadow frees the old shadow before it takes
/// memory for the new one, so rewriting a buffer (a head chunk's d logits, chunk after chunk)
/// never holds two shadows of it: the second run's peak in use is the first's, with the
/// outputs' shadows in place after each run. (Taking the new one first made the old one's
/// bytes the 0.5B step's peak: +0.5 GiB on an H100.)
fn producers_rewrite_within_one_shadow<D: Device>(b: &CudaBackend<D>) {
    let stats = |b: &CudaBackend<D>| b.memory_stats().expect("a caching allocator");
    for p in Producer::ALL {
        let (rows, width) = (17, 904);
        let (ins, lens, shadowed) = p.case(rows, width, 90);
        let ins: Vec<_> = ins.iter().map(|x| b.upload(x)).collect();
        let mut outs: Vec<_> = lens.iter().map(|&n| b.upload(&vec![f32::NAN; n])).collect();
        p.run(b, &mut outs, &ins, rows, width);
        let first = stats(b);
        p.run(b, &mut outs, &ins, rows, width);
        let second = stats(b);
        for (o, out) in outs[..shadowed].iter().enumerate() {
            assert!(
                b.device().bf16_shadow_bits(out.mem(), out.len()).is_some(),
                "{p:?}: output {o}"
            );
        }
        assert_eq!(second.in_use_bytes, first.in_use_bytes, "{p:?}: memory in use after a rewrite");
        let shadow_bytes: usize = lens[..shadowed].iter().map(|n| 2 * n).sum();
        assert!(
            second.peak_in_use_bytes <= first.peak_in_use_bytes,
            "{p:?}: rewriting its output raised the peak by {} B ({shadow_bytes} B of shadows)",
            second.peak_in_use_bytes - first.peak_in_use_bytes
        );
    }
}

/// The bits of `x`'s first `n` values through the GEMMs' conversion kernel
/// (`f32_to_bf16_x8`), which a bf16 GEMM would have run on it without a shadow.
fn converted<D: Device>(b: &CudaBackend<D>, x: &D::Mem, n: usize) -> Vec<u16> {
    let out = b.device().alloc(2 * n);
    mmr1_fast::backend::cuda::device::launch_f32_to_bf16(b.device(), &out, x, n);
    bytemuck::pod_collect_to_vec(&b.device().download(&out, 2 * n))
}

/// With activation shadows on, each producer leaves on its GEMM-operand outputs a bf16 shadow
/// that is the conversion kernel's rounding of the f32 output bit for bit (and `half`'s round
/// to nearest even), on ragged shapes (rows 1, 3, 17; widths 8, 24, 904 = 8 x 113, and 7, 33
/// that leave a tail of the conversion's groups of 8); the f32 outputs are the bits of the
/// plain kernels (run with f32 GEMMs, which keep no shadow); a bf16 GEMM reads the shadow (a
/// hit, no conversion); and the stale-shadow guard holds: a kernel writing the output ends
/// its shadow (the other output's stays), the producer writing it again leaves the new
/// values' shadow. `b` runs bf16 GEMMs with weight and activation shadows on; it is switched
/// to f32 GEMMs for the reference run and back.
fn producers_write_the_gemm_operand<D: Device>(b: &mut CudaBackend<D>) {
    use mmr1_fast::backend::Tr;
    let hits = |b: &CudaBackend<D>| b.memory_stats().expect("a caching allocator").shadow_hits;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let shapes = [(1, 8), (3, 24), (17, 904), (1, 904), (17, 8), (3, 7), (17, 33)];
    for (j, (rows, width)) in shapes.into_iter().enumerate() {
        for p in Producer::ALL {
            let what = format!("{p:?} {rows}x{width}");
            let (ins, lens, shadowed) = p.case(rows, width, 60 + j as u64);
            let run = |b: &CudaBackend<D>, ins: &[Vec<f32>]| {
                let ins: Vec<_> = ins.iter().map(|x| b.upload(x)).collect();
                let mut outs: Vec<_> = lens.iter().map(|&n| b.upload(&vec![f32::NAN; n])).collect();
                p.run(b, &mut outs, &ins, rows, width);
                outs
            };
            let check_shadows = |b: &CudaBackend<D>, outs: &[DevBuf<D::Mem>], when: &str| {
                for (o, out) in outs[..shadowed].iter().enumerate() {
                    let n = out.len();
                    let shadow = b.device().bf16_shadow_bits(out.mem(), n);
                    let shadow =
                        shadow.unwrap_or_else(|| panic!("{what} {when}: output {o} has no shadow"));
                    let f = b.download(out);
                    assert!(f.iter().all(|x| !x.is_nan()), "{what} {when}: output {o} unwritten");
                    assert!(f.iter().any(|x| *x != 0.0), "{what} {when}: output {o} all zero");
                    assert_bf16_bits(&shadow, &f, &format!("{what} {when}: output {o}"));
                    assert!(
                        shadow == converted(b, out.mem(), n),
                        "{what} {when}: output {o}'s shadow is not the conversion kernel's bits"
                    );
                }
            };
            let mut outs = run(b, &ins);
            check_shadows(b, &outs, "written");
            for out in &outs[shadowed..] {
                assert!(
                    b.device().bf16_shadow_bits(out.mem(), out.len()).is_none(),
                    "{what}: rstd"
                );
            }
            // The GEMM reading the first output, [rows, 1] = out[rows, width] @ w^T, finds
            // its shadow (and converts w, an uploaded weight, keeping it: no hit).
            let w = b.upload(&vec![0.5; width]);
            let (h0, mut y) = (hits(b), b.upload(&vec![f32::NAN; rows]));
            b.matmul(&mut y, &outs[0], Tr::N, &w, Tr::T, rows, 1, width, 0.0);
            assert_eq!(hits(b) - h0, 1, "{what}: the GEMM did not read the producer's shadow");

            // The f32 outputs are the plain kernels' bits.
            b.device_mut().set_gemm_precision(false).unwrap();
            let plain = run(b, &ins);
            for out in &plain {
                assert!(
                    b.device().bf16_shadow_bits(out.mem(), out.len()).is_none(),
                    "{what}: f32 GEMMs"
                );
            }
            b.device_mut().set_gemm_precision(true).unwrap();
            for (o, (x, y)) in outs.iter().zip(&plain).enumerate() {
                assert!(
                    bits(&b.download(x)) == bits(&b.download(y)),
                    "{what}: output {o} differs from the plain kernel's"
                );
            }

            // Stale-shadow guard: a kernel writing output 0 ends its shadow, not another's.
            b.scale(&mut outs[0], -1.5);
            assert!(
                b.device().bf16_shadow_bits(outs[0].mem(), lens[0]).is_none(),
                "{what}: kept after scale"
            );
            if shadowed == 2 {
                assert!(
                    b.device().bf16_shadow_bits(outs[1].mem(), lens[1]).is_some(),
                    "{what}: d up's shadow lost"
                );
            }
            let (h0, mut y) = (hits(b), b.upload(&vec![f32::NAN; rows]));
            b.matmul(&mut y, &outs[0], Tr::N, &w, Tr::T, rows, 1, width, 0.0);
            assert_eq!(hits(b) - h0, 1, "{what}: after scale, only w's shadow is valid");
            // Written again by the producer (new inputs, same buffers): the new values' shadow.
            let (ins2, _, _) = p.case(rows, width, 90 + j as u64);
            let ins2: Vec<_> = ins2.iter().map(|x| b.upload(x)).collect();
            p.run(b, &mut outs, &ins2, rows, width);
            check_shadows(b, &outs, "rewritten");
        }
    }
}

/// Outputs planned with `operand_buf` (bf16 alone: src/backend/cuda/bf16_operands.rs) of
/// RMSNorm, `add_rmsnorm`, SwiGLU and SwiGLU's backward hold the bits of the shadow the same
/// op leaves on an f32 output (the rounding a bf16 GEMM reads), and read back as those values
/// widened; a bf16 GEMM gives the same bits on either, as the left operand and transposed (the
/// dW GEMMs), on ragged shapes; the other outputs (rstd, add_rmsnorm's sum) are the f32 run's
/// bits. Any other op given such a buffer panics, as does an f32 GEMM. `b` runs bf16 GEMMs
/// with weight and activation shadows and producer shadows on; it ends in f32 GEMMs.
fn bf16_operands_hold_the_shadow_bits<D: Device>(b: &mut CudaBackend<D>) {
    use mmr1_fast::backend::Tr;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let rand = |n: usize, seed: u64| -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.gen_range(-1.0f32..1.0)).collect()
    };
    assert!(b.operand_buf(1).is_bf16(), "run with MMR1_BF16_OPERANDS and producer shadows on");
    // The stored output against the f32 one: values, shadow bits, and two GEMMs on each.
    let same_operand =
        |b: &CudaBackend<D>, f: &DevBuf<D::Mem>, s: &DevBuf<D::Mem>, rows, width, what: &str| {
            assert!(s.is_bf16() && !f.is_bf16(), "{what}: storage");
            let n = rows * width;
            let shadow = b.device().bf16_shadow_bits(f.mem(), n);
            let shadow = shadow.unwrap_or_else(|| panic!("{what}: the f32 output has no shadow"));
            let got = b.download(s);
            let want: Vec<f32> =
                shadow.iter().map(|&h| half::bf16::from_bits(h).to_f32()).collect();
            assert!(bits(&got[..n]) == bits(&want), "{what}: not the shadow's values");
            let (w, g) = (b.upload(&rand(3 * width, 5)), b.upload(&rand(2 * rows, 6)));
            for (tr, (m, nn, k), other, to) in
                [(Tr::N, (rows, 3, width), &w, Tr::T), (Tr::T, (width, 2, rows), &g, Tr::N)]
            {
                let mut ys = [b.upload(&vec![f32::NAN; m * nn]), b.upload(&vec![f32::NAN; m * nn])];
                for (y, a) in ys.iter_mut().zip([f, s]) {
                    b.matmul(y, a, tr, other, to, m, nn, k, 0.0);
                }
                let (y0, y1) = (b.download(&ys[0]), b.download(&ys[1]));
                assert!(bits(&y0) == bits(&y1), "{what}: GEMM {tr:?} reads other bits");
            }
        };
    let shapes = [(1, 8), (3, 24), (17, 904), (3, 7), (17, 33)];
    for (j, (rows, width)) in shapes.into_iter().enumerate() {
        for p in [Producer::RmsNorm, Producer::Swiglu, Producer::SwigluBackward] {
            let what = format!("{p:?} {rows}x{width}");
            let (ins, lens, stored) = p.case(rows, width, 120 + j as u64);
            let ins: Vec<_> = ins.iter().map(|x| b.upload(x)).collect();
            let nan = |n: usize| b.upload(&vec![f32::NAN; n]);
            let mut f32s: Vec<_> = lens.iter().map(|&n| nan(n)).collect();
            let mut ops: Vec<_> = (lens.iter().enumerate())
                .map(|(o, &n)| if o < stored { b.operand_buf(n) } else { nan(n) })
                .collect();
            p.run(b, &mut f32s, &ins, rows, width);
            p.run(b, &mut ops, &ins, rows, width);
            for o in 0..stored {
                same_operand(b, &f32s[o], &ops[o], rows, width, &format!("{what} output {o}"));
            }
            for o in stored..lens.len() {
                assert!(bits(&b.download(&f32s[o])) == bits(&b.download(&ops[o])), "{what}: {o}");
            }
        }
        // add_rmsnorm: the sum stays f32, the norm goes to the operand.
        let what = format!("add_rmsnorm {rows}x{width}");
        let n = rows * width;
        let (x, y, w) = (b.upload(&rand(n, 7)), b.upload(&rand(n, 8)), b.upload(&rand(width, 9)));
        let nan = |n: usize| b.upload(&vec![f32::NAN; n]);
        let (mut sum_f, mut out_f, mut rstd_f) = (nan(n), nan(n), nan(rows));
        let (mut sum_s, mut out_s, mut rstd_s) = (nan(n), b.operand_buf(n), nan(rows));
        b.add_rmsnorm(&mut sum_f, &mut out_f, &mut rstd_f, &x, &y, &w, rows, width, 1e-6);
        b.add_rmsnorm(&mut sum_s, &mut out_s, &mut rstd_s, &x, &y, &w, rows, width, 1e-6);
        same_operand(b, &out_f, &out_s, rows, width, &what);
        assert!(bits(&b.download(&sum_f)) == bits(&b.download(&sum_s)), "{what}: sum");
        assert!(bits(&b.download(&rstd_f)) == bits(&b.download(&rstd_s)), "{what}: rstd");
    }
    // Any other op, and an f32 GEMM, refuse a bf16-stored buffer (nothing launched).
    let refused = |b: &mut CudaBackend<D>, f: &dyn Fn(&mut CudaBackend<D>)| {
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(b)))
            .expect_err("an op took a bf16-stored buffer as f32");
        let msg = (e.downcast_ref::<String>().cloned())
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(msg.contains("stored as bf16 alone"), "unexpected panic: {msg}");
    };
    let (rows, width) = (5, 12);
    let op = b.operand_buf(rows * width);
    refused(b, &|b| b.scale(&mut b.operand_buf(4), 2.0));
    refused(b, &|b| {
        let mut acc = b.zeros(rows * width);
        b.add_assign(&mut acc, &op);
    });
    b.device_mut().set_gemm_precision(false).unwrap();
    refused(b, &|b| {
        let (mut y, w) = (b.zeros(rows * 3), b.upload(&rand(3 * width, 5)));
        b.matmul(&mut y, &op, Tr::N, &w, Tr::T, rows, 3, width, 0.0);
    });
}

/// Causal flash attention, forward (packed prefills, the training kernel) and decode (one
/// query per sequence: split or staged, then the combine kernel), with activation shadows on
/// writes `out`'s bf16 rounding beside it (the o projection's operand): the shadow is the
/// conversion kernel's bits of the f32 output, which is itself the bits of the same kernels
/// without the copy (`set_producer_shadows(false)`, which leaves no shadow), as is the lse.
/// A step mixing decodes with prefills (a span of one query is a decode) writes `out` in two
/// launches and keeps no shadow. Head dims 64 and 128, 4 query heads on 2 kv heads, ragged
/// spans (one crossing a 64-row tile, one decode of 130 keys over five 32-key splits). `b`
/// runs bf16 GEMMs with weight and activation shadows on.
fn attention_writes_the_o_operand<D: Device>(b: &mut CudaBackend<D>) {
    use mmr1_fast::backend::cuda::{AttnKernel, DecodeKernel};
    use mmr1_fast::backend::{AttnShape, AttnSpan};
    let span = |q_start, q_len, kv_start, kv_len| AttnSpan { q_start, q_len, kv_start, kv_len };
    let cases = [
        ("prefill", vec![span(0, 2, 0, 2), span(2, 3, 2, 3), span(5, 70, 5, 70)], 75, true),
        ("decode", vec![span(0, 1, 0, 1), span(1, 1, 1, 3), span(2, 1, 4, 130)], 134, true),
        ("mixed", vec![span(0, 1, 0, 5), span(1, 17, 5, 17)], 22, false),
        // The prefill rows first: its launch alone would cover rows 0..17.
        ("mixed, prefill first", vec![span(0, 17, 0, 17), span(17, 1, 17, 5)], 22, false),
    ];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    b.set_attention(AttnKernel::Flash);
    let mut r = ChaCha8Rng::seed_from_u64(70);
    for head_dim in [64usize, 128] {
        let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim };
        let (w, wkv) = (4 * head_dim, 2 * head_dim);
        for decode in [DecodeKernel::Staged, DecodeKernel::Split] {
            b.set_decode_kernel(decode);
            for (name, spans, kv_rows, shadowed) in &cases {
                let what = format!("{name}, head dim {head_dim}, {decode:?}");
                let rows: usize = spans.iter().map(|s| s.q_len).sum();
                let mut rand =
                    |n: usize| (0..n).map(|_| r.gen_range(-2.0f32..2.0)).collect::<Vec<_>>();
                let (q, k, v) = (
                    b.upload(&rand(rows * w)),
                    b.upload(&rand(kv_rows * wkv)),
                    b.upload(&rand(kv_rows * wkv)),
                );
                let run = |b: &CudaBackend<D>| {
                    let mut out = b.upload(&vec![f32::NAN; rows * w]);
                    let mut lse = b.upload(&vec![f32::NAN; rows * 4]);
                    b.attention(&mut out, &mut lse, &q, &k, &v, spans, shape);
                    (out, lse)
                };
                let (out, lse) = run(b);
                let f = b.download(&out);
                assert!(f.iter().all(|x| x.is_finite()), "{what}: out not written");
                // Any shadow (one of the first value): a partial one is a defect too.
                let any = b.device().bf16_shadow_bits(out.mem(), 1).is_some();
                match any.then(|| b.device().bf16_shadow_bits(out.mem(), rows * w)).flatten() {
                    _ if any && !shadowed => panic!("{what}: a shadow from two launches"),
                    Some(shadow) => {
                        assert_bf16_bits(&shadow, &f, &what);
                        assert!(
                            shadow == converted(b, out.mem(), rows * w),
                            "{what}: the shadow is not the conversion kernel's bits"
                        );
                    }
                    None => assert!(!shadowed, "{what}: the attention output has no whole shadow"),
                }
                b.set_producer_shadows(false);
                let (out2, lse2) = run(b);
                b.set_producer_shadows(true);
                assert!(
                    b.device().bf16_shadow_bits(out2.mem(), 1).is_none(),
                    "{what}: a shadow with the producers' copies off"
                );
                assert!(
                    bits(&f) == bits(&b.download(&out2)),
                    "{what}: out differs without the copy"
                );
                assert!(
                    bits(&b.download(&lse)) == bits(&b.download(&lse2)),
                    "{what}: lse differs without the copy"
                );
            }
        }
    }
}

/// `adamw_many` with bf16 weight shadows on (`adamw_many_f32` with a shadow in every row)
/// leaves what `adamw` per tensor leaves: over two steps of ragged tensors (an empty one
/// among them), weight decay 0 and not, the same bits of p, m and v, and every non-empty
/// weight's shadow is the round-to-nearest-even conversion of the new weight; with f32 GEMMs
/// it writes no shadow and the same p, m, v bits. The stale-shadow guard: a write to one
/// weight ends its shadow only, the next `adamw_many` makes them all again, `fill_many` ends
/// them. `b` runs bf16 GEMMs with weight shadows on; switched to f32 GEMMs and back.
fn adamw_many_writes_the_weight_shadows<D: Device>(b: &mut CudaBackend<D>) {
    use mmr1_fast::backend::AdamwStep;
    type Bits = Vec<Vec<u32>>;
    let lens = [1usize, 7, 255, 256, 257, 0, 100_003];
    let mut r = ChaCha8Rng::seed_from_u64(60);
    let mut rand = |len: usize, s: f32| (0..len).map(|_| r.gen_range(-s..s)).collect::<Vec<_>>();
    let host: Vec<[Vec<f32>; 5]> = lens
        .iter()
        .map(|&n| {
            let v: Vec<f32> = rand(n, 0.01).iter().map(|x| x.abs()).collect();
            [rand(n, 1.0), rand(n, 0.1), v, rand(n, 1.0), rand(n, 1.0)]
        })
        .collect();
    let hp = |weight_decay: f32, step: u64| AdamwStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay,
        step,
        grad_scale: 0.5,
    };
    let ups =
        |b: &CudaBackend<D>, k: usize| -> Vec<_> { host.iter().map(|t| b.upload(&t[k])).collect() };
    let down = |b: &CudaBackend<D>, xs: &[<CudaBackend<D> as Backend>::Buf]| -> Bits {
        xs.iter().map(|x| b.download(x).iter().map(|v| v.to_bits()).collect()).collect()
    };
    // p, m, v bits and the shadows after each of two steps, `many` or per tensor.
    let run = |b: &CudaBackend<D>, wd: f32, many: bool| -> (Bits, Vec<Vec<Option<Vec<u16>>>>) {
        let (mut p, mut m, mut v) = (ups(b, 0), ups(b, 1), ups(b, 2));
        let mut shadows = Vec::new();
        for (step, k) in [(1u64, 3usize), (2, 4)] {
            let g = ups(b, k);
            if many {
                b.adamw_many(&mut p, &g, &mut m, &mut v, hp(wd, step));
            } else {
                for i in 0..lens.len() {
                    b.adamw(&mut p[i], &g[i], &mut m[i], &mut v[i], hp(wd, step));
                }
            }
            shadows.push(p.iter().map(|x| b.device().bf16_shadow_bits(x.mem(), x.len())).collect());
        }
        ([down(b, &p), down(b, &m), down(b, &v)].concat(), shadows)
    };
    for wd in [0.0f32, 0.1] {
        let (many, sh_many) = run(b, wd, true);
        let (each, sh_each) = run(b, wd, false);
        assert!(many == each, "wd {wd}: adamw_many changed p, m or v");
        for (step, (a, e)) in sh_many.iter().zip(&sh_each).enumerate() {
            for (i, &n) in lens.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let what = format!("wd {wd}, step {}, tensor {i} of {n}", step + 1);
                let sh = a[i].as_ref().unwrap_or_else(|| panic!("{what}: no shadow"));
                assert_eq!(Some(sh), e[i].as_ref(), "{what}: the per-tensor path's shadow");
            }
        }
        // The last step's shadows are the conversion of the final weights.
        for (i, sh) in sh_many[1].iter().enumerate().filter(|(i, _)| lens[*i] > 0) {
            let p: Vec<f32> = many[i].iter().map(|&x| f32::from_bits(x)).collect();
            assert_bf16_bits(sh.as_ref().unwrap(), &p, &format!("wd {wd}: shadow of tensor {i}"));
        }
        b.device_mut().set_gemm_precision(false).unwrap();
        let (plain, sh_plain) = run(b, wd, true);
        b.device_mut().set_gemm_precision(true).unwrap();
        assert!(plain == many, "wd {wd}: adamw_many with and without shadows differ");
        assert!(sh_plain.iter().flatten().all(|s| s.is_none()), "wd {wd}: a shadow with f32 GEMMs");
    }

    // The stale-shadow guard.
    let (mut p, mut m, mut v) = (ups(b, 0), ups(b, 1), ups(b, 2));
    let g = ups(b, 3);
    let has = |b: &CudaBackend<D>, p: &[<CudaBackend<D> as Backend>::Buf]| -> Vec<bool> {
        p.iter().map(|x| b.device().bf16_shadow_bits(x.mem(), x.len()).is_some()).collect()
    };
    let nonempty: Vec<bool> = lens.iter().map(|&n| n > 0).collect();
    b.adamw_many(&mut p, &g, &mut m, &mut v, hp(0.1, 1));
    assert_eq!(has(b, &p), nonempty);
    b.scale(&mut p[2], 1.5);
    let mut want = nonempty.clone();
    want[2] = false;
    assert_eq!(has(b, &p), want, "a write to weight 2 ends its shadow, and only its");
    b.adamw_many(&mut p, &g, &mut m, &mut v, hp(0.1, 2));
    assert_eq!(has(b, &p), nonempty);
    let sh = b.device().bf16_shadow_bits(p[2].mem(), lens[2]).unwrap();
    assert_bf16_bits(&sh, &b.download(&p[2]), "the remade shadow of weight 2");
    b.fill_many(&mut p.iter_mut().collect::<Vec<_>>(), 0.25);
    assert_eq!(has(b, &p), vec![false; lens.len()], "fill_many ends the shadows");
}

/// cp.async, 16-byte and 4-byte (with commit groups and both waits), copies every byte.
fn cp_async_copies<D: Device>(b: &CudaBackend<D>) {
    let mut r = ChaCha8Rng::seed_from_u64(24);
    let n = 4 * 200; // 200 16-byte pieces over 128 threads: both groups, a partial second one
    let x: Vec<f32> = (0..n).map(|_| r.gen_range(-1.0f32..1.0)).collect();
    let (xg, out) = (b.upload(&x), b.upload(&vec![f32::NAN; n]));
    b.device().launch(
        "cp_async_test",
        [1, 1, 1],
        [128, 1, 1],
        0,
        &[Arg::Ptr(out.mem()), Arg::Ptr(xg.mem()), Arg::I32(n as i32)],
    );
    let got = b.download(&out);
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "cp.async round trip"
    );
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
    #[test]
    fn wgmma_layouts() {
        super::wgmma_layouts(&CudaBackend::emulator());
    }
    #[test]
    fn wgmma_test_can_fail() {
        super::wgmma_test_can_fail(&CudaBackend::emulator());
    }
    #[test]
    fn bf16_conversion() {
        super::bf16_conversion(&CudaBackend::emulator());
    }
    #[test]
    fn cp_async_copies() {
        super::cp_async_copies(&CudaBackend::emulator());
    }
    #[test]
    fn adamw_writes_the_weight_shadow() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::precision::Precision;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_bf16_shadows(true);
        let mut b = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
        super::adamw_writes_the_weight_shadow(&mut b);
    }
    #[test]
    fn producers_write_the_gemm_operand() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::precision::Precision;
        let dev =
            EmuDevice::with_schedules(&Schedule::CI).with_bf16_shadows(true).with_act_shadows(true);
        let mut b = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
        super::producers_write_the_gemm_operand(&mut b);
    }
    #[test]
    fn bf16_operands_hold_the_shadow_bits() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::precision::Precision;
        let dev =
            EmuDevice::with_schedules(&Schedule::CI).with_bf16_shadows(true).with_act_shadows(true);
        let b = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
        let mut b = b.with_producer_shadows(true).with_bf16_operands(true);
        super::bf16_operands_hold_the_shadow_bits(&mut b);
    }
    #[test]
    fn producers_rewrite_within_one_shadow() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::precision::Precision;
        let dev = EmuDevice::with_schedules(&[Schedule::Forward])
            .with_bf16_shadows(true)
            .with_act_shadows(true);
        let b = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
        super::producers_rewrite_within_one_shadow(&b);
    }
    #[test]
    fn attention_writes_the_o_operand() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::precision::Precision;
        let dev = EmuDevice::with_schedules(&[Schedule::Forward, Schedule::Reverse])
            .with_bf16_shadows(true)
            .with_act_shadows(true);
        let mut b = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
        super::attention_writes_the_o_operand(&mut b);
    }
    /// Without activation shadows (`MMR1_ACT_SHADOWS=0`) the producers run the plain kernels
    /// and leave no shadow: a bf16 GEMM converts their output into a temporary, as before.
    #[test]
    fn producers_write_no_shadow_without_activation_shadows() {
        use mmr1_fast::backend::cuda::device::Device;
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::precision::Precision;
        use mmr1_fast::backend::Backend;
        let dev = EmuDevice::with_schedules(&[Schedule::Forward])
            .with_bf16_shadows(true)
            .with_act_shadows(false)
            .with_profile();
        let b = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
        for p in super::Producer::ALL {
            let (ins, lens, _) = p.case(3, 24, 7);
            let ins: Vec<_> = ins.iter().map(|x| b.upload(x)).collect();
            let mut outs: Vec<_> = lens.iter().map(|&n| b.upload(&vec![f32::NAN; n])).collect();
            p.run(&b, &mut outs, &ins, 3, 24);
            for out in &outs {
                assert!(b.device().bf16_shadow_bits(out.mem(), out.len()).is_none(), "{p:?}");
            }
        }
        let names: Vec<String> = b.kernel_profile().into_iter().map(|k| k.name).collect();
        assert!(names.iter().all(|n| !n.contains("bf16shadow")), "{names:?}");
    }
    #[test]
    fn adamw_many_writes_the_weight_shadows() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::precision::Precision;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_bf16_shadows(true);
        let mut b = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
        super::adamw_many_writes_the_weight_shadows(&mut b);
    }
    #[test]
    fn activation_shadows_end_when_written() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::precision::Precision;
        let dev = EmuDevice::with_schedules(&[Schedule::Forward])
            .with_bf16_shadows(true)
            .with_act_shadows(true);
        let b = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
        super::activation_shadows_end_when_written(&b, true);
    }
}

#[cfg(feature = "cuda")]
/// GPU tests are #[ignore]d: reported as ignored where there is no GPU, run by
/// scripts/gpu-check.sh with --include-ignored (then a missing GPU is a failure).
mod gpu {
    use mmr1_fast::backend::cuda::CudaBackend;
    fn with_gpu(f: impl FnOnce(&CudaBackend<mmr1_fast::backend::cuda::driver::CudaDevice>)) {
        match CudaBackend::new(0) {
            Ok(b) => f(&b),
            Err(e) => panic!("GPU test asked for, but there is no GPU: {e}"),
        }
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn mma_layouts() {
        with_gpu(super::mma_layouts);
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn mma_test_can_fail() {
        with_gpu(super::mma_test_can_fail);
    }
    /// Needs sm_90 (H100/H200): skipped with a message on other GPUs.
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn wgmma_layouts() {
        with_gpu(|b| {
            if crate::common::wgmma_or_skip(b.device(), "wgmma_layouts") {
                super::wgmma_layouts(b)
            }
        });
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn wgmma_test_can_fail() {
        with_gpu(|b| {
            if crate::common::wgmma_or_skip(b.device(), "wgmma_test_can_fail") {
                super::wgmma_test_can_fail(b)
            }
        });
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn bf16_conversion() {
        with_gpu(super::bf16_conversion);
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn cp_async_copies() {
        with_gpu(super::cp_async_copies);
    }

    /// The GPU backend with bf16 GEMMs, for the shadow tests: they need weight shadows on
    /// (`MMR1_BF16_SHADOWS`) and, with `acts`, activation shadows too (`MMR1_ACT_SHADOWS`).
    fn bf16_gpu(acts: bool) -> CudaBackend<mmr1_fast::backend::cuda::driver::CudaDevice> {
        use mmr1_fast::backend::cuda::device::{act_shadows_from_env, shadows_from_env};
        let mut b = CudaBackend::new(0)
            .unwrap_or_else(|e| panic!("GPU test asked for, but there is no GPU: {e}"));
        b.device_mut().set_gemm_bf16(true);
        if acts {
            assert!(
                shadows_from_env() && act_shadows_from_env(),
                "run with bf16 weight and activation shadows on (MMR1_BF16_SHADOWS, MMR1_ACT_SHADOWS)"
            );
        } else {
            assert!(shadows_from_env(), "run with bf16 weight shadows on (MMR1_BF16_SHADOWS)");
        }
        b
    }

    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn adamw_writes_the_weight_shadow() {
        let mut b = bf16_gpu(false);
        super::adamw_writes_the_weight_shadow(&mut b);
    }

    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn producers_write_the_gemm_operand() {
        let mut b = bf16_gpu(true);
        super::producers_write_the_gemm_operand(&mut b);
    }

    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn bf16_operands_hold_the_shadow_bits() {
        let mut b = bf16_gpu(true);
        super::bf16_operands_hold_the_shadow_bits(&mut b);
    }

    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn attention_writes_the_o_operand() {
        let mut b = bf16_gpu(true);
        super::attention_writes_the_o_operand(&mut b);
    }

    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn adamw_many_writes_the_weight_shadows() {
        let mut b = bf16_gpu(false);
        super::adamw_many_writes_the_weight_shadows(&mut b);
    }

    /// On the GPU the shadow of a GEMM's output ends in `CudaDevice::gemm` alone (cuBLAS
    /// writes it; the emulator's stand-in writes through `Device::write` as well).
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn activation_shadows_end_when_written() {
        super::activation_shadows_end_when_written(&bf16_gpu(true), false);
    }

    /// `Backend::matmul` through cuBLAS GemmEx with bf16 operands (`MMR1_GEMM=bf16`) against
    /// the CPU on bf16-rounded inputs, every transpose, ragged shapes, beta != 0.
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn gemm_bf16_vs_cpu() {
        use mmr1_fast::backend::cpu::Cpu;
        use mmr1_fast::backend::{Backend, Tr};
        use rand::{Rng, SeedableRng};
        let mut b = CudaBackend::new(0)
            .unwrap_or_else(|e| panic!("GPU test asked for, but there is no GPU: {e}"));
        b.device_mut().set_gemm_bf16(true);
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(23);
        for (m, n, k) in [(37usize, 21usize, 50usize), (128, 96, 64), (5, 3, 7), (256, 300, 129)] {
            for (ta, tb) in [(Tr::N, Tr::N), (Tr::N, Tr::T), (Tr::T, Tr::N), (Tr::T, Tr::T)] {
                let a: Vec<f32> = (0..m * k).map(|_| r.gen_range(-1.0f32..1.0)).collect();
                let bm: Vec<f32> = (0..k * n).map(|_| r.gen_range(-1.0f32..1.0)).collect();
                let c: Vec<f32> = (0..m * n).map(|_| r.gen_range(-1.0f32..1.0)).collect();
                let round = |v: &[f32]| v.iter().map(|x| super::bf16_round(*x)).collect::<Vec<_>>();
                let mut want = c.clone();
                Cpu.matmul(&mut want, &round(&a), ta, &round(&bm), tb, m, n, k, 0.5);
                let mut cg = b.upload(&c);
                b.matmul(&mut cg, &b.upload(&a), ta, &b.upload(&bm), tb, m, n, k, 0.5);
                let got = b.download(&cg);
                let num: f64 = got.iter().zip(&want).map(|(g, w)| ((g - w) as f64).powi(2)).sum();
                let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
                let err = (num / den).sqrt();
                println!("ERR gemm_bf16 {m}x{n}x{k} {ta:?}{tb:?}: {err:.3e}");
                assert!(err < 1e-5, "bf16 GEMM {m}x{n}x{k} {ta:?}{tb:?}: rel L2 {err:.3e}");
            }
        }
    }
}
