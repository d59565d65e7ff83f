//! Elementwise ops, bias and embedding rows, and the sum of squares of the gradient clip.

use rayon::prelude::*;

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `out = x + y`.
pub fn add_into(out: &mut [f32], x: &[f32], y: &[f32]) {
    assert!(out.len() == x.len() && x.len() == y.len(), "add_into: length mismatch");
    out.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (a, b))| *o = a + b);
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add_assign: length mismatch");
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    x.iter_mut().for_each(|a| *a *= s);
}

/// Adds `bias` to each of the first `rows` rows of `n`.
pub fn add_bias(x: &mut [f32], bias: &[f32], rows: usize, n: usize) {
    for row in x[..rows * n].chunks_mut(n) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `dbias += column sums of dy` (each in f64).
pub fn bias_backward(dbias: &mut [f32], dy: &[f32], rows: usize, n: usize) {
    for j in 0..n {
        let s: f64 = (0..rows).map(|r| dy[r * n + j] as f64).sum();
        dbias[j] += s as f32;
    }
}

/// Row `t` of `out` = row `ids[t]` of `table`.
pub fn embedding(out: &mut [f32], table: &[f32], ids: &[u32], dim: usize) {
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        out[t * dim..(t + 1) * dim].copy_from_slice(&table[id * dim..(id + 1) * dim]);
    }
}

/// Row `ids[t]` of `dtable` += row `t` of `dout`, in token order.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], dim: usize) {
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        for j in 0..dim {
            dtable[id * dim + j] += dout[t * dim + j];
        }
    }
}

/// `out = silu(gate) * up`.
pub fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
    out.par_iter_mut()
        .zip(gate.par_iter().zip(up.par_iter()))
        .for_each(|(o, (g, u))| *o = silu(*g) * u);
}

/// Writes `dgate` and `dup` from `dout` of `swiglu`.
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    // Zipped chunks rather than indexing by element: no bounds check per value.
    const TASK: usize = 1 << 14;
    let n = dgate.len();
    dgate
        .par_chunks_mut(TASK)
        .zip(dup[..n].par_chunks_mut(TASK))
        .zip(dout[..n].par_chunks(TASK).zip(gate[..n].par_chunks(TASK)))
        .zip(up[..n].par_chunks(TASK))
        .for_each(|(((dg, du), (d, g)), u)| {
            for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du).zip(d).zip(g).zip(u) {
                let sig = 1.0 / (1.0 + (-g).exp());
                *du = d * g * sig;
                // d silu(g)/dg = sig * (1 + g (1 - sig))
                *dg = d * u * sig * (1.0 + g * (1.0 - sig));
            }
        });
}

/// Elements per task of `sum_squares` (the clip norm reads every gradient once).
pub const SUM_CHUNK: usize = 1 << 15;

/// Sum of squares in f64. Fixed chunks, their sums added in chunk order: the result does not
/// depend on the thread count (a rayon `sum` would add in whatever tree the work split into).
pub fn sum_squares(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x.par_chunks(SUM_CHUNK).map(sum_squares_lanes).collect();
    parts.iter().sum()
}

/// Sum of squares in f64 over 8 interleaved accumulators, so the loop is not one long chain
/// of dependent adds and vectorizes; the lanes are then added in order.
fn sum_squares_lanes(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v as f64) * (v as f64);
        }
    }
    let mut s: f64 = acc.iter().sum();
    for &v in it.remainder() {
        s += (v as f64) * (v as f64);
    }
    s
}
