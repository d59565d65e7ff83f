//! Finite-difference checks of every backward op of the CPU reference backend.
//!
//! Each op's output is reduced to a scalar `L = sum_i c_i * out_i` with random `c` (in f64),
//! so the analytic gradient is the op's backward applied to `dout = c`. Central differences
//! in f32 inputs carry ~eps^2 truncation and ~1e-7/eps rounding error; with eps ~ 1e-2..3e-3
//! on O(1) inputs the whole-vector relative L2 error sits near 1e-4, so 2e-3 catches any
//! real mistake (a wrong factor or index gives O(1) errors).

use crate::common;
use common::rel_l2;
use mmr1_fast::backend::cpu::{rope_inv_freq, Cpu};
use mmr1_fast::backend::{AttnShape, AttnSpan, Backend, Tr};
use mmr1_fast::model::init::normal;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn randn(n: usize, seed: u64, std: f32) -> Vec<f32> {
    normal(&mut ChaCha8Rng::seed_from_u64(seed), n, std)
}

fn dot(c: &[f32], y: &[f32]) -> f64 {
    c.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Central-difference gradient of `f` at `x`, element by element.
fn fd_grad(x: &[f32], eps: f32, f: impl Fn(&[f32]) -> f64) -> Vec<f32> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + eps;
            let up = f(&xp);
            xp[i] = x0 - eps;
            let dn = f(&xp);
            xp[i] = x0;
            ((up - dn) / (2.0 * eps as f64)) as f32
        })
        .collect()
}

fn check(name: &str, analytic: &[f32], numeric: &[f32], tol: f64) {
    let e = rel_l2(analytic, numeric);
    assert!(
        e < tol,
        "{name}: rel L2 error {e:e} (tol {tol:e})\n analytic {:?}\n numeric  {:?}",
        &analytic[..analytic.len().min(8)],
        &numeric[..numeric.len().min(8)]
    );
}

const TOL: f64 = 2e-3;

#[test]
fn matmul_all_transposes_and_beta() {
    let be = Cpu;
    let (m, n, k) = (5, 7, 3);
    for ta in [Tr::N, Tr::T] {
        for tb in [Tr::N, Tr::T] {
            for beta in [0.0f32, 0.5] {
                let a = randn(m * k, 1, 1.0);
                let b = randn(k * n, 2, 1.0);
                let c0 = randn(m * n, 3, 1.0);
                let ga = |i: usize, p: usize| if ta == Tr::N { a[i * k + p] } else { a[p * m + i] };
                let gb = |p: usize, j: usize| if tb == Tr::N { b[p * n + j] } else { b[j * k + p] };
                let want: Vec<f32> = (0..m * n)
                    .map(|ij| {
                        let (i, j) = (ij / n, ij % n);
                        let s: f64 = (0..k).map(|p| ga(i, p) as f64 * gb(p, j) as f64).sum();
                        (s + beta as f64 * c0[ij] as f64) as f32
                    })
                    .collect();
                // With beta == 0 the old contents are ignored, NaN included.
                let mut out = if beta == 0.0 { vec![f32::NAN; m * n] } else { c0.clone() };
                be.matmul(&mut out, &a, ta, &b, tb, m, n, k, beta);
                assert!(rel_l2(&out, &want) < 1e-6, "matmul {ta:?} {tb:?} beta {beta}");
            }
        }
    }
}

#[test]
fn matmul_backward_identities() {
    // The model's linear backward: y = x W^T (x [t,i], W [o,i]); dx = dy W; dW += dy^T x.
    let be = Cpu;
    let (t, i, o) = (6, 4, 5);
    let x = randn(t * i, 4, 1.0);
    let w = randn(o * i, 5, 1.0);
    let c = randn(t * o, 6, 1.0);
    let f = |x: &[f32], w: &[f32]| {
        let mut y = vec![0.0; t * o];
        be.matmul(&mut y, &x.to_vec(), Tr::N, &w.to_vec(), Tr::T, t, o, i, 0.0);
        dot(&c, &y)
    };
    let mut dx = vec![f32::NAN; t * i];
    be.matmul(&mut dx, &c, Tr::N, &w, Tr::N, t, i, o, 0.0);
    let mut dw = vec![1.0; o * i];
    be.matmul(&mut dw, &c, Tr::T, &x, Tr::N, o, i, t, 1.0);
    dw.iter_mut().for_each(|g| *g -= 1.0);
    check("dx", &dx, &fd_grad(&x, 1e-2, |xx| f(xx, &w)), TOL);
    check("dW", &dw, &fd_grad(&w, 1e-2, |ww| f(&x, ww)), TOL);
}

#[test]
fn bias_backward_accumulates_column_sums() {
    let be = Cpu;
    let (rows, n) = (7, 5);
    let bias = randn(n, 7, 1.0);
    let x0 = randn(rows * n, 8, 1.0);
    let c = randn(rows * n, 9, 1.0);
    let f = |b: &[f32]| {
        let mut x = x0.clone();
        be.add_bias(&mut x, &b.to_vec(), rows, n);
        dot(&c, &x)
    };
    let mut db = vec![0.25; n];
    be.bias_backward(&mut db, &c, rows, n);
    db.iter_mut().for_each(|g| *g -= 0.25);
    check("dbias", &db, &fd_grad(&bias, 1e-2, f), TOL);
}

#[test]
fn embedding_backward_with_repeated_ids() {
    let be = Cpu;
    let (v, dim) = (6, 4);
    let ids = [3u32, 1, 3, 0, 5, 3];
    let table = randn(v * dim, 10, 1.0);
    let c = randn(ids.len() * dim, 11, 1.0);
    let f = |tb: &[f32]| {
        let mut out = vec![0.0; ids.len() * dim];
        be.embedding(&mut out, &tb.to_vec(), &ids, dim);
        dot(&c, &out)
    };
    let mut dt = vec![0.0; v * dim];
    be.embedding_backward(&mut dt, &c, &ids, dim);
    check("dtable", &dt, &fd_grad(&table, 1e-2, f), TOL);
    assert!(dt[2 * dim..3 * dim].iter().all(|&g| g == 0.0), "an unused row got gradient");
}

#[test]
fn rmsnorm_backward() {
    let be = Cpu;
    let (rows, dim, eps) = (4, 9, 1e-6f32);
    let x = randn(rows * dim, 12, 1.0);
    let w = randn(dim, 13, 0.5).into_iter().map(|a| 1.0 + a).collect::<Vec<_>>();
    let c = randn(rows * dim, 14, 1.0);
    let f = |x: &[f32], w: &[f32]| {
        let (mut out, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows]);
        be.rmsnorm(&mut out, &mut rstd, &x.to_vec(), &w.to_vec(), rows, dim, eps);
        dot(&c, &out)
    };
    let (mut out, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows]);
    be.rmsnorm(&mut out, &mut rstd, &x, &w, rows, dim, eps);
    let mut dx = vec![f32::NAN; rows * dim];
    let mut dw = vec![0.0; dim];
    be.rmsnorm_backward(&mut dx, &mut dw, &c, &x, &w, &rstd, rows, dim);
    check("rmsnorm dx", &dx, &fd_grad(&x, 3e-3, |xx| f(xx, &w)), TOL);
    check("rmsnorm dw", &dw, &fd_grad(&w, 3e-3, |ww| f(&x, ww)), TOL);
}

#[test]
fn rope_inverse_is_the_backward() {
    let be = Cpu;
    let (heads, hd) = (3, 8);
    let positions = [0u32, 1, 2, 7, 0, 3, 100];
    let t = positions.len();
    let x = randn(t * heads * hd, 15, 1.0);
    let c = randn(t * heads * hd, 16, 1.0);
    let f = |x: &[f32]| {
        let mut y = x.to_vec();
        be.rope(&mut y, &positions, heads, hd, &rope_inv_freq(hd, 10000.0), false);
        dot(&c, &y)
    };
    let mut dx = c.clone();
    be.rope(&mut dx, &positions, heads, hd, &rope_inv_freq(hd, 10000.0), true);
    check("rope dx", &dx, &fd_grad(&x, 1e-2, f), TOL);
    // And it really inverts the forward.
    let mut y = x.clone();
    be.rope(&mut y, &positions, heads, hd, &rope_inv_freq(hd, 10000.0), false);
    be.rope(&mut y, &positions, heads, hd, &rope_inv_freq(hd, 10000.0), true);
    assert!(rel_l2(&y, &x) < 1e-6);
}

#[test]
fn attention_backward_gqa_ragged() {
    let be = Cpu;
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 6 };
    let lens = [5usize, 1, 7];
    let mut spans = Vec::new();
    let mut s = 0;
    for &l in &lens {
        spans.push(AttnSpan { q_start: s, q_len: l, kv_start: s, kv_len: l });
        s += l;
    }
    let t = s;
    let (qd, kvd) = (shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim);
    let q = randn(t * qd, 17, 1.0);
    let k = randn(t * kvd, 18, 1.0);
    let v = randn(t * kvd, 19, 1.0);
    let c = randn(t * qd, 20, 1.0);
    let f = |q: &[f32], k: &[f32], v: &[f32]| {
        let (mut out, mut lse) = (vec![0.0; t * qd], vec![0.0; t * shape.n_heads]);
        be.attention(&mut out, &mut lse, &q.to_vec(), &k.to_vec(), &v.to_vec(), &spans, shape);
        dot(&c, &out)
    };
    let (mut out, mut lse) = (vec![0.0; t * qd], vec![0.0; t * shape.n_heads]);
    be.attention(&mut out, &mut lse, &q, &k, &v, &spans, shape);
    let (mut dq, mut dk, mut dv) =
        (vec![f32::NAN; t * qd], vec![f32::NAN; t * kvd], vec![f32::NAN; t * kvd]);
    be.attention_backward(&mut dq, &mut dk, &mut dv, &c, &q, &k, &v, &out, &lse, &spans, shape);
    check("attn dq", &dq, &fd_grad(&q, 3e-3, |x| f(x, &k, &v)), TOL);
    check("attn dk", &dk, &fd_grad(&k, 3e-3, |x| f(&q, x, &v)), TOL);
    check("attn dv", &dv, &fd_grad(&v, 3e-3, |x| f(&q, &k, x)), TOL);
}

#[test]
fn swiglu_backward() {
    let be = Cpu;
    let n = 23;
    let g = randn(n, 21, 2.0);
    let u = randn(n, 22, 1.0);
    let c = randn(n, 23, 1.0);
    let f = |g: &[f32], u: &[f32]| {
        let mut out = vec![0.0; n];
        be.swiglu(&mut out, &g.to_vec(), &u.to_vec());
        dot(&c, &out)
    };
    let (mut dg, mut du) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    be.swiglu_backward(&mut dg, &mut du, &c, &g, &u);
    check("swiglu dgate", &dg, &fd_grad(&g, 1e-2, |x| f(x, &u)), TOL);
    check("swiglu dup", &du, &fd_grad(&u, 1e-2, |x| f(&g, x)), TOL);
}

#[test]
fn logprobs_backward_with_entropy_and_temperature() {
    let be = Cpu;
    let (rows, vocab) = (5, 11);
    let inv_temp = 1.0 / 0.7;
    let logits = randn(rows * vocab, 24, 2.0);
    let targets = [3u32, 0, 10, 3, 7];
    let a = randn(rows, 25, 1.0);
    let b = randn(rows, 26, 1.0);
    for (with_ent, name) in [(false, "lp only"), (true, "lp + entropy")] {
        let bb = if with_ent { b.clone() } else { vec![0.0; rows] };
        let f = |x: &[f32]| {
            let (mut lp, mut ent) = (vec![0.0; rows], vec![0.0; rows]);
            be.logprobs(&mut lp, &mut ent, &x.to_vec(), &targets, rows, vocab, inv_temp);
            dot(&a, &lp) + dot(&bb, &ent)
        };
        let mut dl = vec![f32::NAN; rows * vocab];
        be.logprobs_backward(&mut dl, &logits, &targets, &a, &bb, rows, vocab, inv_temp);
        check(name, &dl, &fd_grad(&logits, 3e-3, f), TOL);
    }
}
