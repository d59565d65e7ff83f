//! Every op of the CUDA backend against the CPU reference, on random inputs at ragged shapes,
//! outputs poisoned with NaN first; plus determinism and batch invariance.
//!
//! Runs on the CUDA emulator with `--features emu`, every launch under each schedule of
//! `Schedule::CI` (forward, reverse, random, a starved warp) with bit-identical results
//! demanded (`MMR1_EMU_SCHEDULE` overrides the list), and on the real GPU with
//! `--features cuda`: those tests are `#[ignore]`d (reported as ignored where there is no GPU)
//! and scripts/gpu-check.sh runs them with `--include-ignored`.
#![cfg(any(feature = "emu", feature = "cuda"))]

use mmr1_fast::backend::cpu::{rope_inv_freq, Cpu};
use mmr1_fast::backend::cuda::device::Device;
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::{AdamwStep, AttnShape, AttnSpan, Backend, Tr};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::kernel_check;
use kernel_check::*;

const TOL: f64 = 1e-5;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---- elementwise and memory ---------------------------------------------------------------

fn memory_ops<B: Backend>(b: &B) {
    let mut r = rng(1);
    for n in [1usize, 7, 257, 1000] {
        let z = b.zeros(n);
        assert_eq!(b.download(&z), vec![0.0; n], "zeros");
        assert_eq!(b.len(&b.output_buf(n)), n, "output_buf: n values");
        let h = rand_vec(&mut r, n, 1.0);
        let x = b.upload(&h);
        assert_eq!(b.len(&x), n);
        assert_eq!(bits(&b.download(&x)), bits(&h), "upload/download");
        let mut f = b.zeros(n);
        b.fill(&mut f, 3.5);
        assert_eq!(b.download(&f), vec![3.5; n], "fill");
        // copy a middle range into a random destination
        let dh = rand_vec(&mut r, n + 3, 1.0);
        let mut d = b.upload(&dh);
        let (so, cnt) = (n / 3, n - n / 3);
        b.copy(&mut d, 2, &x, so, cnt);
        let mut want = dh.clone();
        want[2..2 + cnt].copy_from_slice(&h[so..so + cnt]);
        assert_eq!(bits(&b.download(&d)), bits(&want), "copy");
    }
}

/// `scatter_rows` / `gather_rows` against the CPU: ragged widths, rows unordered (a decode
/// step's slots in any order), gathers that repeat a row; destinations poisoned with NaN so
/// rows the op must not touch are checked to keep their bits (NaN included).
fn row_moves<B: Backend>(b: &B) {
    use rand::seq::SliceRandom;
    let mut r = rng(21);
    for (buf_rows, n, width) in [(1usize, 1usize, 1usize), (9, 4, 7), (40, 13, 33), (300, 64, 130)]
    {
        // Scatter: n distinct destination rows out of buf_rows, shuffled.
        let mut all: Vec<usize> = (0..buf_rows).collect();
        all.shuffle(&mut r);
        let rows = &all[..n];
        let src = rand_vec(&mut r, n * width, 1.0);
        let mut want = vec![f32::NAN; buf_rows * width];
        Cpu.scatter_rows(&mut want, rows, &src, width);
        let mut dst = poisoned(b, buf_rows * width);
        b.scatter_rows(&mut dst, rows, &b.upload(&src), width);
        let got = b.download(&dst);
        assert_eq!(bits(&got), bits(&want), "scatter_rows {n} of {buf_rows} rows x {width}");
        let written = rows.iter().map(|&row| &got[row * width..(row + 1) * width]);
        assert!(written.flatten().all(|x| x.is_finite()), "scatter_rows left a row unwritten");
        let kept = (0..buf_rows).filter(|row| !rows.contains(row)).count();
        let nan = got.iter().filter(|x| x.is_nan()).count();
        assert_eq!(nan, kept * width, "scatter_rows touched rows it was not given");

        // Gather: n rows of a random buffer, with repeats.
        let table = rand_vec(&mut r, buf_rows * width, 1.0);
        let g: Vec<usize> = (0..n).map(|_| r.gen_range(0..buf_rows)).collect();
        let mut want = vec![f32::NAN; (n + 2) * width];
        Cpu.gather_rows(&mut want, &table, &g, width);
        let mut dst = poisoned(b, (n + 2) * width);
        b.gather_rows(&mut dst, &b.upload(&table), &g, width);
        let got = b.download(&dst);
        assert_eq!(bits(&got), bits(&want), "gather_rows {n} of {buf_rows} rows x {width}");
        assert!(got[n * width..].iter().all(|x| x.is_nan()), "gather_rows wrote past its rows");
    }
}

/// Rows a scatter must refuse, on every backend with the same message.
fn row_move_errors<B: Backend>(b: &B) {
    let panics = |f: &dyn Fn()| {
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("no panic");
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    let src = b.upload(&[1.0; 6]);
    let msg = panics(&|| b.scatter_rows(&mut b.zeros(9), &[0, 3], &src, 3));
    assert!(msg.contains("rows[1] = 3 is out of range"), "{msg}");
    let msg = panics(&|| b.scatter_rows(&mut b.zeros(9), &[2, 0, 2], &b.upload(&[1.0; 9]), 3));
    assert!(msg.contains("row 2 is listed twice"), "{msg}");
    // In order but repeated: the in-order fast path must still see the repeat.
    let msg = panics(&|| b.scatter_rows(&mut b.zeros(9), &[0, 1, 1], &b.upload(&[1.0; 9]), 3));
    assert!(msg.contains("row 1 is listed twice"), "{msg}");
    let msg = panics(&|| b.gather_rows(&mut b.zeros(6), &src, &[1, 2], 3));
    assert!(msg.contains("gather_rows src: rows[1] = 2 is out of range"), "{msg}");
    let msg = panics(&|| b.scatter_rows(&mut b.zeros(9), &[0, 1, 2], &src, 3));
    assert!(msg.contains("need 9 values, the packed buffer holds 6"), "{msg}");
}

fn elementwise<B: Backend>(b: &B) {
    let mut r = rng(2);
    // (600, 33) and (1100, 70): column reductions cut into row slices (col_slices).
    for (rows, n) in [(1usize, 1usize), (3, 7), (17, 65), (33, 300), (600, 33), (1100, 70)] {
        let len = rows * n;
        let (xh, yh, bias) =
            (rand_vec(&mut r, len, 2.0), rand_vec(&mut r, len, 2.0), rand_vec(&mut r, n, 1.0));
        // add_bias
        let (mut xc, mut xg) = (xh.clone(), b.upload(&xh));
        Cpu.add_bias(&mut xc, &bias, rows, n);
        b.add_bias(&mut xg, &b.upload(&bias), rows, n);
        assert_close("add_bias", &b.download(&xg), &xc, TOL);
        // bias_backward accumulates
        let db0 = rand_vec(&mut r, n, 1.0);
        let (mut dc, mut dg) = (db0.clone(), b.upload(&db0));
        Cpu.bias_backward(&mut dc, &yh, rows, n);
        b.bias_backward(&mut dg, &b.upload(&yh), rows, n);
        assert_close("bias_backward", &b.download(&dg), &dc, TOL);
        // add_assign, scale
        let (mut xc, mut xg) = (xh.clone(), b.upload(&xh));
        Cpu.add_assign(&mut xc, &yh);
        b.add_assign(&mut xg, &b.upload(&yh));
        assert_close("add_assign", &b.download(&xg), &xc, TOL);
        let (mut oc, mut og) = (vec![f32::NAN; len], poisoned(b, len));
        Cpu.add_into(&mut oc, &xh, &yh);
        b.add_into(&mut og, &b.upload(&xh), &b.upload(&yh));
        assert_eq!(bits(&b.download(&og)), bits(&oc), "add_into");
        assert_eq!(bits(&oc), bits(&xc), "add_into is copy + add_assign");
        Cpu.scale(&mut xc, -0.37);
        b.scale(&mut xg, -0.37);
        assert_close("scale", &b.download(&xg), &xc, TOL);
        // sum_squares (f64)
        let (sc, sg) = (Cpu.sum_squares(&xh), b.sum_squares(&b.upload(&xh)));
        assert!(((sg - sc) / sc).abs() < 1e-9, "sum_squares {sg} vs {sc}");
        // swiglu and backward
        let (gate, up, dout) =
            (rand_vec(&mut r, len, 4.0), rand_vec(&mut r, len, 2.0), rand_vec(&mut r, len, 1.0));
        let mut oc = vec![0.0; len];
        Cpu.swiglu(&mut oc, &gate, &up);
        let mut og = poisoned(b, len);
        b.swiglu(&mut og, &b.upload(&gate), &b.upload(&up));
        assert_close("swiglu", &b.download(&og), &oc, TOL);
        let (mut dgc, mut duc) = (vec![0.0; len], vec![0.0; len]);
        Cpu.swiglu_backward(&mut dgc, &mut duc, &dout, &gate, &up);
        let (mut dgg, mut dug) = (poisoned(b, len), poisoned(b, len));
        b.swiglu_backward(&mut dgg, &mut dug, &b.upload(&dout), &b.upload(&gate), &b.upload(&up));
        assert_close("swiglu_backward dgate", &b.download(&dgg), &dgc, TOL);
        assert_close("swiglu_backward dup", &b.download(&dug), &duc, TOL);
    }
    assert_eq!(b.sum_squares(&b.zeros(0)), 0.0);
}

fn adamw<B: Backend>(b: &B) {
    let mut r = rng(3);
    for (n, step) in [(1usize, 1u64), (1000, 1), (4099, 7)] {
        let hp = AdamwStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
            grad_scale: 0.5,
        };
        let (p, g, m) =
            (rand_vec(&mut r, n, 1.0), rand_vec(&mut r, n, 1.0), rand_vec(&mut r, n, 0.1));
        let v: Vec<f32> = rand_vec(&mut r, n, 0.01).iter().map(|x| x.abs()).collect();
        let (mut pc, mut mc, mut vc) = (p.clone(), m.clone(), v.clone());
        Cpu.adamw(&mut pc, &g, &mut mc, &mut vc, hp);
        let (mut pg, mut mg, mut vg) = (b.upload(&p), b.upload(&m), b.upload(&v));
        b.adamw(&mut pg, &b.upload(&g), &mut mg, &mut vg, hp);
        assert_close("adamw p", &b.download(&pg), &pc, TOL);
        assert_close("adamw m", &b.download(&mg), &mc, TOL);
        assert_close("adamw v", &b.download(&vg), &vc, TOL);
    }
}

// ---- the optimizer side over a list of tensors ----------------------------------------------

/// Ragged tensor lengths: one element, a partial block, a block boundary either side, an
/// empty tensor, several hundred blocks.
const RAGGED: [usize; 8] = [1, 7, 255, 256, 257, 0, 100_003, 3000];

/// `sum_squares_many` gives the bits of the per-tensor `sum_squares` added in order (what
/// `optim::grad_norm` summed before; kill/resume and ZeRO runs compare norms bit for bit),
/// and agrees with the CPU's f64 sum; empty lists and empty tensors add nothing.
fn sum_squares_many<B: Backend>(b: &B) {
    let mut r = rng(4);
    // Scales over several binades, so a tensor summed in the wrong place shows in the bits.
    let host: Vec<Vec<f32>> = RAGGED
        .iter()
        .enumerate()
        .map(|(i, &n)| rand_vec(&mut r, n, 4f32.powi(i as i32 - 3)))
        .collect();
    let bufs: Vec<B::Buf> = host.iter().map(|h| b.upload(h)).collect();
    let all: Vec<&B::Buf> = bufs.iter().collect();
    let per_tensor: f64 = bufs.iter().map(|x| b.sum_squares(x)).sum();
    let many = b.sum_squares_many(&all);
    assert_eq!(many.to_bits(), per_tensor.to_bits(), "sum_squares_many {many} vs {per_tensor}");
    let cpu: f64 = host.iter().map(|h| Cpu.sum_squares(h)).sum();
    assert!(((many - cpu) / cpu).abs() < 1e-9, "sum_squares_many {many} vs CPU {cpu}");
    // Order and membership matter: a sublist in another order is that sublist's sum.
    let some = [&bufs[6], &bufs[0], &bufs[3]];
    let want: f64 = some.iter().map(|x| b.sum_squares(x)).sum();
    assert_eq!(b.sum_squares_many(&some).to_bits(), want.to_bits(), "a reordered sublist");
    assert_eq!(b.sum_squares_many(&[]), 0.0);
    assert_eq!(b.sum_squares_many(&[&bufs[5]]), 0.0, "one empty tensor");
}

/// `fill_many` writes every element of every listed buffer (they start as NaN) and nothing
/// of a buffer it was not given.
fn fill_many<B: Backend>(b: &B) {
    let mut r = rng(5);
    let mut bufs: Vec<B::Buf> = RAGGED.iter().map(|&n| poisoned(b, n)).collect();
    let other_host = rand_vec(&mut r, 300, 1.0);
    let other = b.upload(&other_host);
    {
        let mut list: Vec<&mut B::Buf> = bufs.iter_mut().collect();
        b.fill_many(&mut list, -2.5);
    }
    for (x, &n) in bufs.iter().zip(&RAGGED) {
        assert_eq!(b.download(x), vec![-2.5; n], "fill_many, length {n}");
    }
    assert_eq!(bits(&b.download(&other)), bits(&other_host), "fill_many wrote another buffer");
    b.fill_many(&mut [], 1.0);
}

/// `adamw_many` over ragged tensors (an empty one among them) gives the bits of `adamw` per
/// tensor (the optimizer's step before; kill/resume and ZeRO runs compare weights bit for bit)
/// for p, m and v, over two steps, with weight decay 0 and not; the values agree with the CPU;
/// a buffer not in the lists keeps its bits.
fn adamw_many<B: Backend>(b: &B) {
    let mut r = rng(6);
    for (wd, clip) in [(0.0f32, 1.0f32), (0.1, 0.37)] {
        let host: Vec<[Vec<f32>; 4]> = RAGGED
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let s = 4f32.powi(i as i32 % 4 - 2);
                let v: Vec<f32> =
                    rand_vec(&mut r, n, 0.01 * s * s).iter().map(|x| x.abs()).collect();
                [rand_vec(&mut r, n, 1.0), rand_vec(&mut r, n, s), rand_vec(&mut r, n, 0.1 * s), v]
            })
            .collect();
        let up = |k: usize| -> Vec<B::Buf> { host.iter().map(|t| b.upload(&t[k])).collect() };
        let (mut p1, g, mut m1, mut v1) = (up(0), up(1), up(2), up(3));
        let (mut p2, mut m2, mut v2) = (up(0), up(2), up(3));
        let cpu_copy = |k: usize| -> Vec<Vec<f32>> { host.iter().map(|t| t[k].clone()).collect() };
        let (mut pc, mut mc, mut vc) = (cpu_copy(0), cpu_copy(2), cpu_copy(3));
        let other_host = rand_vec(&mut r, 300, 1.0);
        let other = b.upload(&other_host);
        for step in [1u64, 2] {
            let hp = hp(wd, clip, step);
            for i in 0..RAGGED.len() {
                b.adamw(&mut p1[i], &g[i], &mut m1[i], &mut v1[i], hp);
                Cpu.adamw(&mut pc[i], &host[i][1], &mut mc[i], &mut vc[i], hp);
            }
            b.adamw_many(&mut p2, &g, &mut m2, &mut v2, hp);
            for (i, &n) in RAGGED.iter().enumerate() {
                let what = |x: &str| format!("adamw_many {x}, length {n}, wd {wd}, step {step}");
                for (x, one, many, cpu) in
                    [("p", &p1, &p2, &pc), ("m", &m1, &m2, &mc), ("v", &v1, &v2, &vc)]
                {
                    let got = b.download(&many[i]);
                    assert_eq!(bits(&got), bits(&b.download(&one[i])), "{}", what(x));
                    if n > 0 {
                        assert_close(&what(x), &got, &cpu[i], TOL);
                    }
                }
            }
        }
        assert_eq!(bits(&b.download(&other)), bits(&other_host), "adamw_many wrote another buffer");
    }
    b.adamw_many(&mut [], &[], &mut [], &mut [], hp(0.0, 1.0, 1));
}

fn hp(weight_decay: f32, grad_scale: f32, step: u64) -> AdamwStep {
    AdamwStep { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay, step, grad_scale }
}

fn matmul<B: Backend>(b: &B) {
    let mut r = rng(4);
    for (m, n, k) in [(1usize, 1usize, 1usize), (7, 5, 3), (33, 17, 65), (64, 96, 40)] {
        for ta in [Tr::N, Tr::T] {
            for tb in [Tr::N, Tr::T] {
                for beta in [0.0f32, 0.5] {
                    let (a, bb, c0) = (
                        rand_vec(&mut r, m * k, 1.0),
                        rand_vec(&mut r, k * n, 1.0),
                        rand_vec(&mut r, m * n, 1.0),
                    );
                    let mut cc = c0.clone();
                    Cpu.matmul(&mut cc, &a, ta, &bb, tb, m, n, k, beta);
                    let mut cg = if beta == 0.0 { poisoned(b, m * n) } else { b.upload(&c0) };
                    b.matmul(&mut cg, &b.upload(&a), ta, &b.upload(&bb), tb, m, n, k, beta);
                    assert_close(
                        &format!("matmul {m}x{n}x{k} {ta:?}{tb:?} beta {beta}"),
                        &b.download(&cg),
                        &cc,
                        TOL,
                    );
                }
            }
        }
    }
}

/// The gemm_f32 kernel itself (the fallback when no library GEMM loads).
fn gemm_kernel<D: Device>(b: &CudaBackend<D>) {
    let mut r = rng(5);
    for (m, n, k) in [(1usize, 1usize, 1usize), (7, 5, 3), (33, 17, 65), (40, 70, 33)] {
        for ta in [Tr::N, Tr::T] {
            for tb in [Tr::N, Tr::T] {
                for beta in [0.0f32, 0.5] {
                    let (a, bb, c0) = (
                        rand_vec(&mut r, m * k, 1.0),
                        rand_vec(&mut r, k * n, 1.0),
                        rand_vec(&mut r, m * n, 1.0),
                    );
                    let mut cc = c0.clone();
                    Cpu.matmul(&mut cc, &a, ta, &bb, tb, m, n, k, beta);
                    let mut cg = if beta == 0.0 { poisoned(b, m * n) } else { b.upload(&c0) };
                    b.matmul_kernel(&mut cg, &b.upload(&a), ta, &b.upload(&bb), tb, m, n, k, beta);
                    assert_close(
                        &format!("gemm_f32 {m}x{n}x{k} {ta:?}{tb:?} beta {beta}"),
                        &b.download(&cg),
                        &cc,
                        TOL,
                    );
                }
            }
        }
    }
}

/// Rounding through bf16/f16 matches the `half` crate (round-to-nearest-even) bit for bit.
fn conversions<D: Device>(b: &CudaBackend<D>) {
    let mut r = rng(6);
    let mut xs: Vec<f32> = rand_vec(&mut r, 2000, 1.0)
        .iter()
        .enumerate()
        .map(|(i, x)| x * 2f32.powi((i % 60) as i32 - 30))
        .collect();
    // ties, subnormals, overflow, specials
    xs.extend([
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        65520.0,
        65519.0,
        1e-7,
        3e-8,
        2.98e-8,
        -0.0,
        f32::INFINITY,
        3.4e38,
        1e-40,
    ]);
    let x = b.upload(&xs);
    let mut o = poisoned(b, xs.len());
    b.round_16(&mut o, &x, false);
    let want: Vec<f32> = xs.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect();
    assert_eq!(bits(&b.download(&o)), bits(&want), "bf16 rounding");
    b.round_16(&mut o, &x, true);
    let want: Vec<f32> = xs.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
    assert_eq!(bits(&b.download(&o)), bits(&want), "f16 rounding");
}

// ---- decoder ops ----------------------------------------------------------------------------

fn embedding<B: Backend>(b: &B) {
    let mut r = rng(7);
    for (vocab, dim, ntok) in [(5usize, 1usize, 3usize), (50, 33, 40), (11, 300, 17)] {
        let table = rand_vec(&mut r, vocab * dim, 1.0);
        let ids: Vec<u32> = (0..ntok).map(|_| r.gen_range(0..vocab as u32)).collect();
        let mut oc = vec![0.0; ntok * dim];
        Cpu.embedding(&mut oc, &table, &ids, dim);
        let mut og = poisoned(b, ntok * dim);
        b.embedding(&mut og, &b.upload(&table), &ids, dim);
        assert_close("embedding", &b.download(&og), &oc, TOL);
        let dout = rand_vec(&mut r, ntok * dim, 1.0);
        let dt0 = rand_vec(&mut r, vocab * dim, 1.0);
        let mut dc = dt0.clone();
        Cpu.embedding_backward(&mut dc, &dout, &ids, dim);
        let mut dg = b.upload(&dt0);
        b.embedding_backward(&mut dg, &b.upload(&dout), &ids, dim);
        assert_close("embedding_backward", &b.download(&dg), &dc, TOL);
    }
}

fn rmsnorm<B: Backend>(b: &B) {
    let mut r = rng(8);
    for (rows, dim) in [(1usize, 1usize), (3, 7), (5, 64), (9, 300), (2, 1000), (700, 40)] {
        let (x, w) = (rand_vec(&mut r, rows * dim, 2.0), rand_vec(&mut r, dim, 1.5));
        let (mut oc, mut rc) = (vec![0.0; rows * dim], vec![0.0; rows]);
        Cpu.rmsnorm(&mut oc, &mut rc, &x, &w, rows, dim, 1e-6);
        let (mut og, mut rg) = (poisoned(b, rows * dim), poisoned(b, rows));
        let (xg, wg) = (b.upload(&x), b.upload(&w));
        b.rmsnorm(&mut og, &mut rg, &xg, &wg, rows, dim, 1e-6);
        assert_close("rmsnorm out", &b.download(&og), &oc, TOL);
        assert_close("rmsnorm rstd", &b.download(&rg), &rc, TOL);
        let dout = rand_vec(&mut r, rows * dim, 1.0);
        let dw0 = rand_vec(&mut r, dim, 1.0);
        let (mut dxc, mut dwc) = (vec![0.0; rows * dim], dw0.clone());
        Cpu.rmsnorm_backward(&mut dxc, &mut dwc, &dout, &x, &w, &rc, rows, dim);
        let (mut dxg, mut dwg) = (poisoned(b, rows * dim), b.upload(&dw0));
        b.rmsnorm_backward(
            &mut dxg,
            &mut dwg,
            &b.upload(&dout),
            &xg,
            &wg,
            &b.upload(&rc),
            rows,
            dim,
        );
        assert_close(&format!("rmsnorm_backward dx {rows}x{dim}"), &b.download(&dxg), &dxc, TOL);
        assert_close("rmsnorm_backward dw", &b.download(&dwg), &dwc, TOL);
    }
}

fn rope<B: Backend>(b: &B) {
    let mut r = rng(9);
    for (ntok, heads, hd) in [(1usize, 1usize, 2usize), (5, 3, 8), (7, 2, 64), (3, 4, 128)] {
        let x = rand_vec(&mut r, ntok * heads * hd, 1.0);
        let pos: Vec<u32> = (0..ntok).map(|_| r.gen_range(0..4096)).collect();
        for inverse in [false, true] {
            let mut xc = x.clone();
            Cpu.rope(&mut xc, &pos, heads, hd, &rope_inv_freq(hd, 1e6), inverse);
            let mut xg = b.upload(&x);
            b.rope(&mut xg, &pos, heads, hd, &rope_inv_freq(hd, 1e6), inverse);
            assert_close(&format!("rope inverse={inverse}"), &b.download(&xg), &xc, TOL);
            if inverse {
                b.rope(&mut xg, &pos, heads, hd, &rope_inv_freq(hd, 1e6), false);
                assert_close("rope round trip", &b.download(&xg), &x, TOL);
            }
        }
    }
}

/// Packs full sequences of the given lengths back to back (q_len == kv_len).
fn packed(lens: &[usize]) -> Vec<AttnSpan> {
    let mut at = 0;
    lens.iter()
        .map(|&l| {
            let s = AttnSpan { q_start: at, q_len: l, kv_start: at, kv_len: l };
            at += l;
            s
        })
        .collect()
}

struct AttnCase {
    spans: Vec<AttnSpan>,
    shape: AttnShape,
    q_rows: usize,
    kv_rows: usize,
}

fn attn_cases() -> Vec<AttnCase> {
    let mut cases = Vec::new();
    let sh = |h, hkv, d| AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d };
    for (lens, shape) in [
        (vec![1usize, 7, 33], sh(4, 2, 16)),
        (vec![5, 1], sh(2, 1, 24)),
        (vec![130], sh(2, 2, 8)),
        (vec![3, 9], sh(3, 3, 64)),
    ] {
        let n: usize = lens.iter().sum();
        cases.push(AttnCase { spans: packed(&lens), shape, q_rows: n, kv_rows: n });
    }
    // Decode-style: queries are the last q_len positions of longer sequences; query rows and
    // kv rows index different buffers, and q row 2 is covered by no span.
    cases.push(AttnCase {
        spans: vec![
            AttnSpan { q_start: 0, q_len: 1, kv_start: 0, kv_len: 40 },
            AttnSpan { q_start: 3, q_len: 3, kv_start: 40, kv_len: 10 },
            AttnSpan { q_start: 1, q_len: 1, kv_start: 50, kv_len: 1 },
        ],
        shape: sh(4, 1, 32),
        q_rows: 6,
        kv_rows: 51,
    });
    cases
}

/// Rows covered by spans, as (q rows, kv rows) masks.
fn covered(c: &AttnCase) -> (Vec<bool>, Vec<bool>) {
    let (mut q, mut kv) = (vec![false; c.q_rows], vec![false; c.kv_rows]);
    for s in &c.spans {
        q[s.q_start..s.q_start + s.q_len].iter_mut().for_each(|x| *x = true);
        kv[s.kv_start..s.kv_start + s.kv_len].iter_mut().for_each(|x| *x = true);
    }
    (q, kv)
}

/// Elements of rows flagged in `mask`, rows of `width`.
fn rows_of(v: &[f32], mask: &[bool], width: usize) -> Vec<f32> {
    v.chunks(width).zip(mask).filter(|(_, m)| **m).flat_map(|(r, _)| r.iter().copied()).collect()
}

type AttnOut = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

/// Forward then backward on a backend; returns (out, lse, dq, dk, dv).
fn run_attention<B: Backend>(
    b: &B,
    c: &AttnCase,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
) -> AttnOut {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
    let (qg, kg, vg) = (b.upload(q), b.upload(k), b.upload(v));
    let (mut og, mut lg) = (poisoned(b, c.q_rows * h * d), poisoned(b, c.q_rows * h));
    b.attention(&mut og, &mut lg, &qg, &kg, &vg, &c.spans, c.shape);
    let (mut dq, mut dk, mut dv) = (
        poisoned(b, c.q_rows * h * d),
        poisoned(b, c.kv_rows * hkv * d),
        poisoned(b, c.kv_rows * hkv * d),
    );
    b.attention_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        &b.upload(dout),
        &qg,
        &kg,
        &vg,
        &og,
        &lg,
        &c.spans,
        c.shape,
    );
    (b.download(&og), b.download(&lg), b.download(&dq), b.download(&dk), b.download(&dv))
}

fn attn_inputs(r: &mut ChaCha8Rng, c: &AttnCase) -> [Vec<f32>; 4] {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
    [
        rand_vec(r, c.q_rows * h * d, 1.0),
        rand_vec(r, c.kv_rows * hkv * d, 1.0),
        rand_vec(r, c.kv_rows * hkv * d, 1.0),
        rand_vec(r, c.q_rows * h * d, 1.0),
    ]
}

fn attention<B: Backend>(b: &B) {
    let mut r = rng(10);
    for c in attn_cases() {
        let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
        let [q, k, v, dout] = attn_inputs(&mut r, &c);
        let want = run_attention(&Cpu, &c, &q, &k, &v, &dout);
        let got = run_attention(b, &c, &q, &k, &v, &dout);
        let (qm, kvm) = covered(&c);
        let tag = format!(
            "{:?} {:?}",
            c.shape,
            c.spans.iter().map(|s| (s.q_len, s.kv_len)).collect::<Vec<_>>()
        );
        assert_close(
            &format!("attention out {tag}"),
            &rows_of(&got.0, &qm, h * d),
            &rows_of(&want.0, &qm, h * d),
            TOL,
        );
        assert_close(
            &format!("attention lse {tag}"),
            &rows_of(&got.1, &qm, h),
            &rows_of(&want.1, &qm, h),
            TOL,
        );
        assert_close(
            &format!("attention dq {tag}"),
            &rows_of(&got.2, &qm, h * d),
            &rows_of(&want.2, &qm, h * d),
            TOL,
        );
        assert_close(
            &format!("attention dk {tag}"),
            &rows_of(&got.3, &kvm, hkv * d),
            &rows_of(&want.3, &kvm, hkv * d),
            TOL,
        );
        assert_close(
            &format!("attention dv {tag}"),
            &rows_of(&got.4, &kvm, hkv * d),
            &rows_of(&want.4, &kvm, hkv * d),
            TOL,
        );
        // Rows outside every span are left untouched (still the NaN poison).
        for (i, m) in qm.iter().enumerate() {
            if !m {
                assert!(
                    got.0[i * h * d..(i + 1) * h * d].iter().all(|x| x.is_nan()),
                    "attention wrote an uncovered row"
                );
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn logprobs_case<B: Backend>(
    b: &B,
    logits: &[f32],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    inv_temp: f32,
    dlp: &[f32],
    dent: &[f32],
) -> [Vec<f32>; 3] {
    let lg = b.upload(logits);
    let (mut lp, mut ent) = (poisoned(b, rows), poisoned(b, rows));
    b.logprobs(&mut lp, &mut ent, &lg, targets, rows, vocab, inv_temp);
    let mut dl = poisoned(b, rows * vocab);
    b.logprobs_backward(
        &mut dl,
        &lg,
        targets,
        &b.upload(dlp),
        &b.upload(dent),
        rows,
        vocab,
        inv_temp,
    );
    let out = [b.download(&lp), b.download(&ent), b.download(&dl)];
    // The two as one call (a loss whose gradient is known before the log-probs): the same
    // bits as the ops above, into outputs poisoned again.
    let (mut lp1, mut ent1, mut dl1) =
        (poisoned(b, rows), poisoned(b, rows), poisoned(b, rows * vocab));
    let (g, ge) = (b.upload(dlp), b.upload(dent));
    b.logprobs_and_backward(
        &mut dl1, &mut lp1, &mut ent1, &lg, targets, &g, &ge, rows, vocab, inv_temp,
    );
    let one = [b.download(&lp1), b.download(&ent1), b.download(&dl1)];
    for (name, (x, y)) in ["lp", "entropy", "d logits"].iter().zip(one.iter().zip(&out)) {
        assert_eq!(bits(x), bits(y), "logprobs_and_backward's {name} differ from the two ops'");
    }
    out
}

fn logprobs<B: Backend>(b: &B) {
    let mut r = rng(11);
    for (rows, vocab, inv_temp) in
        [(1usize, 1usize, 1.0f32), (5, 7, 1.0), (13, 1000, 0.7), (3, 3001, 1.0), (2, 20000, 1.3)]
    {
        let logits = rand_vec(&mut r, rows * vocab, 4.0);
        let targets: Vec<u32> = (0..rows).map(|_| r.gen_range(0..vocab as u32)).collect();
        let (dlp, dent) = (rand_vec(&mut r, rows, 1.0), rand_vec(&mut r, rows, 1.0));
        let want = logprobs_case(&Cpu, &logits, &targets, rows, vocab, inv_temp, &dlp, &dent);
        let got = logprobs_case(b, &logits, &targets, rows, vocab, inv_temp, &dlp, &dent);
        let tag = format!("rows {rows} vocab {vocab} T^-1 {inv_temp}");
        assert_close(&format!("logprobs lp {tag}"), &got[0], &want[0], TOL);
        assert_close(&format!("logprobs entropy {tag}"), &got[1], &want[1], TOL);
        assert_close(&format!("logprobs_backward {tag}"), &got[2], &want[2], TOL);
    }
}

/// Logits masked to -inf (top-k/top-p, banned tokens): a partly or mostly masked row gives
/// the log-prob, entropy and gradient of the same row with the masked tokens removed (and a
/// zero gradient on them); a row masked entirely gives lp = -inf, entropy 0, gradient 0.
/// The first logit of each row is masked: a thread whose first element is -inf once computed
/// -inf - (-inf).
fn logprobs_masked<B: Backend>(b: &B) {
    let mut r = rng(14);
    for (vocab, keep, inv_temp) in
        [(7usize, 0.5f64, 1.0f32), (1000, 0.5, 0.7), (3001, 0.01, 1.0), (20000, 0.002, 1.3)]
    {
        let rows = 3;
        let mut logits = rand_vec(&mut r, rows * vocab, 4.0);
        let mut kept: Vec<Vec<usize>> = Vec::new();
        for row in 0..rows {
            let mut k: Vec<usize> = (1..vocab).filter(|_| r.gen_bool(keep)).collect();
            if k.is_empty() {
                k.push(r.gen_range(1..vocab));
            }
            for j in 0..vocab {
                if !k.contains(&j) {
                    logits[row * vocab + j] = f32::NEG_INFINITY;
                }
            }
            kept.push(k);
        }
        let targets: Vec<u32> = kept.iter().map(|k| k[r.gen_range(0..k.len())] as u32).collect();
        let (dlp, dent) = (rand_vec(&mut r, rows, 1.0), rand_vec(&mut r, rows, 1.0));
        let got = logprobs_case(b, &logits, &targets, rows, vocab, inv_temp, &dlp, &dent);
        // The reference: each row alone with its masked tokens removed, on the CPU.
        let (mut lp, mut ent, mut dl) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows * vocab]);
        for (row, k) in kept.iter().enumerate() {
            let compact: Vec<f32> = k.iter().map(|&j| logits[row * vocab + j]).collect();
            let t = k.iter().position(|&j| j == targets[row] as usize).unwrap() as u32;
            let w = logprobs_case(
                &Cpu,
                &compact,
                &[t],
                1,
                k.len(),
                inv_temp,
                &dlp[row..row + 1],
                &dent[row..row + 1],
            );
            (lp[row], ent[row]) = (w[0][0], w[1][0]);
            for (c, &j) in k.iter().enumerate() {
                dl[row * vocab + j] = w[2][c];
            }
        }
        let tag =
            format!("vocab {vocab}, {:?} kept", kept.iter().map(|k| k.len()).collect::<Vec<_>>());
        assert_close(&format!("masked logprobs lp {tag}"), &got[0], &lp, TOL);
        assert_close(&format!("masked logprobs entropy {tag}"), &got[1], &ent, TOL);
        assert_close(&format!("masked logprobs_backward {tag}"), &got[2], &dl, TOL);
        let masked_grad = got[2].iter().zip(&logits).filter(|(_, l)| l.is_infinite());
        assert!(masked_grad.clone().all(|(g, _)| *g == 0.0), "gradient on a -inf logit");
    }
    // A row of only -inf logits between two ordinary rows.
    let vocab = 300;
    let mut logits = rand_vec(&mut r, 3 * vocab, 4.0);
    logits[vocab..2 * vocab].fill(f32::NEG_INFINITY);
    let (targets, dlp, dent) = ([3u32, 7, 11], [0.5f32, -1.0, 0.25], [1.0f32, 2.0, -0.5]);
    let got = logprobs_case(b, &logits, &targets, 3, vocab, 1.0, &dlp, &dent);
    assert_eq!(got[0][1], f32::NEG_INFINITY, "lp of an all -inf row");
    assert_eq!(got[1][1].to_bits(), 0.0f32.to_bits(), "entropy of an all -inf row");
    assert!(got[2][vocab..2 * vocab].iter().all(|g| *g == 0.0), "gradient of an all -inf row");
    assert!(got[0][0].is_finite() && got[0][2].is_finite(), "neighbours of an all -inf row");
}

/// The CPU reference follows the same -inf conventions.
#[test]
fn cpu_logprobs_masked() {
    logprobs_masked(&Cpu);
}

// ---- determinism and batch invariance ---------------------------------------------------------

fn determinism<B: Backend>(b: &B) {
    let mut r = rng(12);
    let c = &attn_cases()[0];
    let [q, k, v, dout] = attn_inputs(&mut r, c);
    let a1 = run_attention(b, c, &q, &k, &v, &dout);
    let a2 = run_attention(b, c, &q, &k, &v, &dout);
    for (x, y) in [(&a1.0, &a2.0), (&a1.1, &a2.1), (&a1.2, &a2.2), (&a1.3, &a2.3), (&a1.4, &a2.4)] {
        assert_eq!(bits(x), bits(y), "attention is not bit-reproducible");
    }
    let (rows, vocab) = (6, 3001);
    let logits = rand_vec(&mut r, rows * vocab, 4.0);
    let targets: Vec<u32> = (0..rows).map(|_| r.gen_range(0..vocab as u32)).collect();
    let (dlp, dent) = (rand_vec(&mut r, rows, 1.0), rand_vec(&mut r, rows, 1.0));
    let l1 = logprobs_case(b, &logits, &targets, rows, vocab, 0.9, &dlp, &dent);
    let l2 = logprobs_case(b, &logits, &targets, rows, vocab, 0.9, &dlp, &dent);
    for i in 0..3 {
        assert_eq!(bits(&l1[i]), bits(&l2[i]), "logprobs is not bit-reproducible");
    }
    let x = b.upload(&rand_vec(&mut r, 300_001, 1.0));
    assert_eq!(b.sum_squares(&x).to_bits(), b.sum_squares(&x).to_bits(), "sum_squares");
    // Reductions into accumulators: rmsnorm dw, bias and embedding gradients.
    let (rows, dim) = (37, 129);
    let (xh, w, g) = (
        rand_vec(&mut r, rows * dim, 1.0),
        rand_vec(&mut r, dim, 1.0),
        rand_vec(&mut r, rows * dim, 1.0),
    );
    let ids: Vec<u32> = (0..rows).map(|_| r.gen_range(0..5)).collect();
    let run = || {
        let (xg, wg) = (b.upload(&xh), b.upload(&w));
        let (mut o, mut rs) = (b.zeros(rows * dim), b.zeros(rows));
        b.rmsnorm(&mut o, &mut rs, &xg, &wg, rows, dim, 1e-6);
        let (mut dx, mut dw) = (b.zeros(rows * dim), b.zeros(dim));
        let gg = b.upload(&g);
        b.rmsnorm_backward(&mut dx, &mut dw, &gg, &xg, &wg, &rs, rows, dim);
        let mut db = b.zeros(dim);
        b.bias_backward(&mut db, &gg, rows, dim);
        let mut de = b.zeros(5 * dim);
        b.embedding_backward(&mut de, &gg, &ids, dim);
        [b.download(&dx), b.download(&dw), b.download(&db), b.download(&de)]
    };
    let (r1, r2) = (run(), run());
    for i in 0..4 {
        assert_eq!(bits(&r1[i]), bits(&r2[i]), "gradient reduction {i} is not bit-reproducible");
    }
}

fn batch_invariance<B: Backend>(b: &B) {
    let mut r = rng(13);
    // logprobs: a row alone gives the same bits as inside a batch.
    let (rows, vocab) = (7, 2000);
    let logits = rand_vec(&mut r, rows * vocab, 4.0);
    let targets: Vec<u32> = (0..rows).map(|_| r.gen_range(0..vocab as u32)).collect();
    let (dlp, dent) = (rand_vec(&mut r, rows, 1.0), rand_vec(&mut r, rows, 1.0));
    let all = logprobs_case(b, &logits, &targets, rows, vocab, 1.0, &dlp, &dent);
    for row in [0usize, 4] {
        let one = logprobs_case(
            b,
            &logits[row * vocab..(row + 1) * vocab],
            &targets[row..row + 1],
            1,
            vocab,
            1.0,
            &dlp[row..row + 1],
            &dent[row..row + 1],
        );
        assert_eq!(one[0][0].to_bits(), all[0][row].to_bits(), "logprobs depends on the batch");
        assert_eq!(one[1][0].to_bits(), all[1][row].to_bits(), "entropy depends on the batch");
        assert_eq!(
            bits(&one[2]),
            bits(&all[2][row * vocab..(row + 1) * vocab]),
            "logprobs_backward depends on the batch"
        );
    }
    // attention: the middle sequence alone vs packed between neighbours.
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 16 };
    let lens = [5usize, 33, 7];
    let c = AttnCase { spans: packed(&lens), shape, q_rows: 45, kv_rows: 45 };
    let [q, k, v, dout] = attn_inputs(&mut r, &c);
    let all = run_attention(b, &c, &q, &k, &v, &dout);
    let (w, wk) = (shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim);
    let sub = |x: &[f32], width: usize| x[5 * width..38 * width].to_vec();
    let c1 = AttnCase { spans: packed(&[33]), shape, q_rows: 33, kv_rows: 33 };
    let one = run_attention(b, &c1, &sub(&q, w), &sub(&k, wk), &sub(&v, wk), &sub(&dout, w));
    assert_eq!(bits(&one.0), bits(&sub(&all.0, w)), "attention out depends on the batch");
    assert_eq!(
        bits(&one.1),
        bits(&sub(&all.1, shape.n_heads)),
        "attention lse depends on the batch"
    );
    assert_eq!(bits(&one.2), bits(&sub(&all.2, w)), "attention dq depends on the batch");
    assert_eq!(bits(&one.3), bits(&sub(&all.3, wk)), "attention dk depends on the batch");
    assert_eq!(bits(&one.4), bits(&sub(&all.4, wk)), "attention dv depends on the batch");
}

// ---- the two devices -----------------------------------------------------------------------------

backend_suite!(
    memory_ops,
    row_moves,
    row_move_errors,
    elementwise,
    adamw,
    sum_squares_many,
    fill_many,
    adamw_many,
    matmul,
    embedding,
    rmsnorm,
    rope,
    attention,
    logprobs,
    logprobs_masked,
    determinism,
    batch_invariance,
    gemm_kernel,
    conversions
);

#[test]
fn cpu_row_move_errors() {
    row_move_errors(&Cpu);
}

/// A backend made on one thread and used from another that has made no CUDA call: a test
/// harness's threads, a rank's worker. The raw driver and cuBLAS calls (uploads, launches,
/// GEMMs) must make the context current themselves; before they did, the first upload on such
/// a thread failed with CUDA_ERROR_INVALID_CONTEXT (22 GPU tests, H100 call of 2026-11-27).
/// The emulator has no contexts: GPU only.
#[cfg(feature = "cuda")]
mod threads {
    mod gpu {
        use super::super::*;
        use mmr1_fast::backend::cuda::driver::CudaDevice;

        #[test]
        #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
        fn backend_used_from_a_fresh_thread() {
            let b: CudaBackend<CudaDevice> = CudaBackend::new(0)
                .unwrap_or_else(|e| panic!("GPU test asked for, but there is no GPU: {e}"));
            let mut r = rng(7);
            let (m, n, k) = (33usize, 17usize, 45usize);
            let (a, w, y) = (
                rand_vec(&mut r, m * k, 1.0),
                rand_vec(&mut r, n * k, 1.0),
                rand_vec(&mut r, m * n, 1.0),
            );
            let mut want = vec![f32::NAN; m * n];
            Cpu.matmul(&mut want, &a, Tr::N, &w, Tr::T, m, n, k, 0.0);
            Cpu.add_assign(&mut want, &y);
            Cpu.scale(&mut want, 0.5);
            for round in 0..2 {
                let got = std::thread::scope(|s| {
                    s.spawn(|| {
                        let mut out = b.upload(&vec![f32::NAN; m * n]); // upload: a raw write
                        b.matmul(
                            &mut out,
                            &b.upload(&a),
                            Tr::N,
                            &b.upload(&w),
                            Tr::T,
                            m,
                            n,
                            k,
                            0.0,
                        );
                        b.add_assign(&mut out, &b.upload(&y)); // a kernel launch
                        b.scale(&mut out, 0.5);
                        b.download(&out)
                    })
                    .join()
                    .unwrap_or_else(|_| panic!("round {round}: the fresh thread panicked"))
                });
                assert_close(&format!("round {round}: matmul + add + scale"), &got, &want, TOL);
            }
        }
    }
}
