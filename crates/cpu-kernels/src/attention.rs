//! Causal (or, for the vision tower, bidirectional) grouped-query attention on the CPU in f32, blocked so that the work is GEMM: for a
//! block of query rows, `S = Q K^T` over the keys the block can see, a row softmax with the
//! causal mask, `O = P V`; the backward recomputes `P` from the saved log-sum-exp (as flash
//! attention does, Dao et al. 2022, Algorithm 2) and forms `dV += P^T dO`, `dP = dO V^T`,
//! `dS = P (dP - rowsum(dO * O))`, `dQ = dS K`, `dK += dS^T Q`. Memory per work item is one
//! `[BLOCK x keys]` score block, never `[tokens x tokens]` for the batch.
//!
//! `attention_ref` holds the scalar f64 version this one is tested against.

use crate::gemm::gemm_st;
use crate::{AttnShape, AttnSpan};
use rayon::prelude::*;

/// Query rows per block: large enough that the GEMMs run at speed, small enough that the
/// score block of a long sequence stays in cache-sized pieces.
const BLOCK: usize = 64;

/// Forward: fills `out` and `lse` for every query row of every span (see `Backend::attention`).
pub fn forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[AttnSpan],
    shape: AttnShape,
) {
    forward_masked(out, lse, q, k, v, spans, shape, true)
}

/// `forward` with the mask chosen: `causal == false` lets every query of a span see all of
/// the span's keys (`Backend::attention_bidir`, the vision tower's window/full attention).
#[allow(clippy::too_many_arguments)]
pub fn forward_masked(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[AttnSpan],
    shape: AttnShape,
    causal: bool,
) {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = shape;
    let group = h / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    // One work item per (span, head, block of query rows).
    let items: Vec<(AttnSpan, usize, usize)> = spans
        .iter()
        .flat_map(|&sp| {
            (0..h).flat_map(move |hh| (0..sp.q_len).step_by(BLOCK).map(move |i0| (sp, hh, i0)))
        })
        .collect();
    let results: Vec<(Vec<f32>, Vec<f32>)> = items
        .par_iter()
        .map(|&(sp, hh, i0)| {
            let rows = BLOCK.min(sp.q_len - i0);
            let kvh = hh / group;
            // Query i of the span sits at position kv_len - q_len + i and sees that many + 1 keys.
            let first_pos = sp.kv_len - sp.q_len + i0;
            let n_keys = if causal { first_pos + rows } else { sp.kv_len };
            let qb = &q[((sp.q_start + i0) * h + hh) * d..];
            let kb = &k[(sp.kv_start * hkv + kvh) * d..];
            let vb = &v[(sp.kv_start * hkv + kvh) * d..];
            // S = Q K^T : [rows, n_keys]
            let mut p = vec![0.0f32; rows * n_keys];
            gemm_st(&mut p, n_keys, false, qb, h * d, 1, kb, 1, hkv * d, rows, n_keys, d);
            let mut l = vec![0.0f32; rows];
            for (r, (row, lr)) in p.chunks_mut(n_keys).zip(l.iter_mut()).enumerate() {
                let seen = if causal { first_pos + r + 1 } else { n_keys };
                let mx = row[..seen].iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s)) * scale;
                let mut z = 0.0f64;
                for s in &mut row[..seen] {
                    *s = (*s * scale - mx).exp();
                    z += *s as f64;
                }
                let inv = (1.0 / z) as f32;
                row[..seen].iter_mut().for_each(|s| *s *= inv);
                row[seen..].fill(0.0);
                *lr = mx + (z.ln() as f32);
            }
            // O = P V : [rows, d]
            let mut o = vec![0.0f32; rows * d];
            gemm_st(&mut o, d, false, &p, n_keys, 1, vb, hkv * d, 1, rows, d, n_keys);
            (o, l)
        })
        .collect();
    for (&(sp, hh, i0), (o, l)) in items.iter().zip(results) {
        for (r, (orow, lr)) in o.chunks(d).zip(l).enumerate() {
            let row = sp.q_start + i0 + r;
            out[(row * h + hh) * d..][..d].copy_from_slice(orow);
            lse[row * h + hh] = lr;
        }
    }
}

/// Backward: overwrites `dq`, `dk`, `dv` rows covered by spans (see `Backend::attention_backward`).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    spans: &[AttnSpan],
    shape: AttnShape,
) {
    backward_masked(dq, dk, dv, dout, q, k, v, out, lse, spans, shape, true)
}

/// `backward` with the mask chosen (see `forward_masked`).
#[allow(clippy::too_many_arguments)]
pub fn backward_masked(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    spans: &[AttnSpan],
    shape: AttnShape,
    causal: bool,
) {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = shape;
    let group = h / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    // One work item per (span, kv head): it owns that head's dk/dv rows and the dq rows of
    // its query heads, so no two items write the same element.
    let items: Vec<(AttnSpan, usize)> =
        spans.iter().flat_map(|&sp| (0..hkv).map(move |g| (sp, g))).collect();
    struct Grad {
        dq: Vec<f32>, // [group, q_len, d]
        dk: Vec<f32>, // [kv_len, d]
        dv: Vec<f32>,
    }
    let grads: Vec<Grad> = items
        .par_iter()
        .map(|&(sp, kvh)| {
            let mut gq = vec![0.0f32; group * sp.q_len * d];
            let mut gk = vec![0.0f32; sp.kv_len * d];
            let mut gv = vec![0.0f32; sp.kv_len * d];
            let kb = &k[(sp.kv_start * hkv + kvh) * d..];
            let vb = &v[(sp.kv_start * hkv + kvh) * d..];
            let mut p = Vec::new();
            let mut dp = Vec::new();
            for gi in 0..group {
                let hh = kvh * group + gi;
                for i0 in (0..sp.q_len).step_by(BLOCK) {
                    let rows = BLOCK.min(sp.q_len - i0);
                    let first_pos = sp.kv_len - sp.q_len + i0;
                    let n_keys = if causal { first_pos + rows } else { sp.kv_len };
                    let row0 = sp.q_start + i0;
                    let qb = &q[(row0 * h + hh) * d..];
                    let dob = &dout[(row0 * h + hh) * d..];
                    p.resize(rows * n_keys, 0.0);
                    dp.resize(rows * n_keys, 0.0);
                    // P = exp(Q K^T * scale - lse), masked; dP = dO V^T.
                    gemm_st(&mut p, n_keys, false, qb, h * d, 1, kb, 1, hkv * d, rows, n_keys, d);
                    gemm_st(&mut dp, n_keys, false, dob, h * d, 1, vb, 1, hkv * d, rows, n_keys, d);
                    for r in 0..rows {
                        let at = ((row0 + r) * h + hh) * d;
                        let l = lse[(row0 + r) * h + hh];
                        // D = dO . O (= sum_j P_j dP_j)
                        let dd: f32 =
                            dout[at..at + d].iter().zip(&out[at..at + d]).map(|(a, b)| a * b).sum();
                        let seen = if causal { first_pos + r + 1 } else { n_keys };
                        let (pr, dpr) =
                            (&mut p[r * n_keys..][..n_keys], &mut dp[r * n_keys..][..n_keys]);
                        for (s, g) in pr[..seen].iter_mut().zip(&mut dpr[..seen]) {
                            *s = (*s * scale - l).exp();
                            // dS, with the softmax scale folded in
                            *g = *s * (*g - dd) * scale;
                        }
                        pr[seen..].fill(0.0);
                        dpr[seen..].fill(0.0);
                    }
                    // dV[0..n_keys] += P^T dO ; dK[0..n_keys] += dS^T Q ; dQ = dS K
                    gemm_st(&mut gv, d, true, &p, 1, n_keys, dob, h * d, 1, n_keys, d, rows);
                    gemm_st(&mut gk, d, true, &dp, 1, n_keys, qb, h * d, 1, n_keys, d, rows);
                    let gqb = &mut gq[(gi * sp.q_len + i0) * d..];
                    gemm_st(gqb, d, false, &dp, n_keys, 1, kb, hkv * d, 1, rows, d, n_keys);
                }
            }
            Grad { dq: gq, dk: gk, dv: gv }
        })
        .collect();
    for (&(sp, kvh), g) in items.iter().zip(grads) {
        for gi in 0..group {
            let hh = kvh * group + gi;
            for i in 0..sp.q_len {
                let dst = ((sp.q_start + i) * h + hh) * d;
                dq[dst..dst + d].copy_from_slice(&g.dq[(gi * sp.q_len + i) * d..][..d]);
            }
        }
        for j in 0..sp.kv_len {
            let dst = ((sp.kv_start + j) * hkv + kvh) * d;
            dk[dst..dst + d].copy_from_slice(&g.dk[j * d..][..d]);
            dv[dst..dst + d].copy_from_slice(&g.dv[j * d..][..d]);
        }
    }
}
